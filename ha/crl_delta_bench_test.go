package ha

import (
	"encoding/json"
	"math/big"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/crlchanges"
	"github.com/stepfort/stepfort/internal/storage"
)

// BenchmarkDeltaCRL publishes a delta CRL of 100 changes over a base of
// 1,000,000 entries (STEPFORT_BENCH_BASE overrides the size): the delta
// reads the change log and its own small row, never the base's entries,
// so its cost does not depend on the base's size. Each iteration records
// 100 new revocations and publishes one delta listing them (and those of
// earlier iterations, as a delta lists everything since the base: the
// change log is reset every 10 iterations to keep it at 100–1,000).
func BenchmarkDeltaCRL(b *testing.B) {
	size := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("STEPFORT_BENCH_BASE")); err == nil {
		size = v
	}
	h := newCRLHost(b)
	h.Clock = time.Now
	p := newDeltaPublisher(b, h, false)
	must(b, h.store.CreateTable(storage.RevokedCertsTable))
	now := time.Now().UTC()
	for have := 0; have < size; {
		tx := &database.Tx{}
		for ; have < size && len(tx.Operations) < 100_000; have++ {
			sn := new(big.Int).Lsh(big.NewInt(1), 126)
			sn.Add(sn, big.NewInt(int64(have)*1_000_003))
			row, _ := json.Marshal(&db.RevokedCertificateInfo{Serial: sn.String(), ReasonCode: 1, RevokedAt: now, ExpiresAt: now.Add(30 * 24 * time.Hour)})
			tx.Set(storage.RevokedCertsTable, []byte(sn.String()), row)
		}
		must(b, h.store.Update(tx))
	}
	t0 := time.Now()
	must(b, p.Publish())
	_, base, _ := storedCRL(b, h.store)
	b.Logf("base of %d entries published in %s (%d bytes)", size, time.Since(t0), len(base.Raw))
	serial := int64(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if i%10 == 0 {
			_, read, err := crlchanges.List(h.store, ownSeriesName)
			must(b, err)
			must(b, crlchanges.Remove(h.store, read))
		}
		for range 100 {
			must(b, crlchanges.Record(h.store, ownSeriesName, crlchanges.Change{Serial: strconv.FormatInt(serial, 10), RevokedAt: now, Reason: 1}, time.Now()))
			serial++
		}
		b.StartTimer()
		must(b, p.PublishDelta())
	}
}
