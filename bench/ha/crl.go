package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/smallstep/certificates/authority"
	upconfig "github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/ha"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// The CRL part runs in a child process (this binary with -crl-child) so that
// its RSS is not mixed with the load generator's or the other parts' heap.

// benchHost is the plugins.Host the publisher needs: an upstream authority
// (for the intermediate and its signer) over a bbolt database, on the real
// clock. Its logger keeps the attributes of the publisher's "CRL
// published" line, which break the publication down.
type benchHost struct {
	*plugintest.Host
	published map[string]float64
}

func newBenchHost(auth *authority.Authority, store nosql.DB, replica string) *benchHost {
	h := &benchHost{Host: plugintest.New(store, "bbolt", replica)}
	h.Auth, h.Clock = auth, time.Now
	h.Log = slog.New(publishedHandler{h})
	return h
}

// newBenchPublisher is a CRL publisher for the bench's scope.
func newBenchPublisher(h *benchHost) (*ha.Publisher, error) {
	pub, err := ha.NewPublisher(h, 5*time.Second, 15*time.Second)
	if err != nil {
		return nil, err
	}
	scope, err := ha.NewCRLScope("http://localhost/1.0/crl", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	pub.Activate(scope)
	return pub, nil
}

// publishedHandler records the numeric attributes of "CRL published".
type publishedHandler struct{ h *benchHost }

func (publishedHandler) Enabled(context.Context, slog.Level) bool { return true }
func (p publishedHandler) WithAttrs([]slog.Attr) slog.Handler     { return p }
func (p publishedHandler) WithGroup(string) slog.Handler          { return p }
func (p publishedHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "CRL published" {
		return nil
	}
	p.h.published = map[string]float64{}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Value.Kind() {
		case slog.KindFloat64:
			p.h.published[a.Key] = a.Value.Float64()
		case slog.KindInt64:
			p.h.published[a.Key] = float64(a.Value.Int64())
		}
		return true
	})
	return nil
}

// crlStep is the measurement of one CRL publication at a table size.
// bench/ha/run.go reads Entries, PublishSec, CRLBytes, RSSBefore and
// PeakDuring.
type crlStep struct {
	Entries     int     `json:"entries"`
	PopulateSec float64 `json:"populateSec"` // time to add the rows of this step
	PublishSec  float64 `json:"publishSec"`
	CRLBytes    int     `json:"crlBytes"`
	CRLEntries  int     `json:"crlEntries"`
	RSSBefore   float64 `json:"rssBeforeMiB"`  // VmRSS before Publish (after GC)
	PeakDuring  float64 `json:"peakDuringMiB"` // VmHWM, reset before Publish
	RSSAfter    float64 `json:"rssAfterMiB"`
	HWMReset    bool    `json:"hwmReset"` // false: VmHWM could not be reset, peak is process-wide
	// Breakdown of Publish, from its log line: streaming the table while
	// decoding and encoding every entry, then the extensions, hash and
	// signature, then the JSON row and the compare-and-swap.
	ScanEncodeSec float64 `json:"scanEncodeSec"`
	SignSec       float64 `json:"signSec"`
	StoreSec      float64 `json:"storeSec"`
	// The table read alone: storage.ForEach with an empty callback, and
	// RSS before it (which includes the bbolt pages of the CRL row the
	// check before it read: the scan releases them as it goes).
	ForEachSec    float64 `json:"forEachSec"`
	ForEachBefore float64 `json:"forEachBeforeMiB"`
	ForEachPeak   float64 `json:"forEachPeakMiB"`
	// The steady state: Publish again over the same table, with the
	// previous CRL (same size) cached and in the row being replaced.
	AgainSec  float64 `json:"againSec"`
	AgainPeak float64 `json:"againPeakMiB"`
	// A replica that did not publish reading the new CRL (the row's JSON
	// and the CRL header) on its first request, then serving from cache.
	ReloadSec float64 `json:"reloadSec"`
	DBBytes   int64   `json:"dbBytes"`
}

func (s crlStep) String() string {
	reset := ""
	if !s.HWMReset {
		reset = " (VmHWM not resettable: process-wide peak)"
	}
	return fmt.Sprintf("%8d revoked: populate %5.1fs (bbolt %4.0f MiB), Publish %5.2fs, CRL %5.1f MiB / %d entries, RSS before %6.1f MiB, peak during Publish %6.1f MiB%s, after %6.1f MiB; "+
		"breakdown: scan+decode+encode %4.2fs, sign %4.2fs, store %4.2fs; storage.ForEach alone %4.2fs (RSS %6.1f -> peak %6.1f MiB); "+
		"Publish again (same size, steady state) %4.2fs (peak %6.1f MiB); other replica's first read of the new CRL %4.2fs",
		s.Entries, s.PopulateSec, float64(s.DBBytes)/(1<<20), s.PublishSec, float64(s.CRLBytes)/(1<<20), s.CRLEntries, s.RSSBefore, s.PeakDuring, reset, s.RSSAfter,
		s.ScanEncodeSec, s.SignSec, s.StoreSec, s.ForEachSec, s.ForEachBefore, s.ForEachPeak, s.AgainSec, s.AgainPeak, s.ReloadSec)
}

// crlChild populates revoked_x509_certs in a fresh bbolt file up to each
// size in sizes and publishes a CRL through ha.Publisher at each.
func crlChild(caConfig, password, dbPath string, sizes []int) error {
	cfg, err := upconfig.LoadConfiguration(caConfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", caConfig, err)
	}
	cfg.CRL = nil // upstream's own CRL generation would List the table too
	_ = os.Remove(dbPath)
	adb, err := db.New(&db.Config{Type: "bbolt", DataSource: dbPath})
	if err != nil {
		return fmt.Errorf("open bbolt: %w", err)
	}
	store := adb.(*db.DB).DB
	defer store.Close()
	auth, err := authority.New(cfg, authority.WithDatabase(adb), authority.WithPassword([]byte(password)), authority.WithQuietInit())
	if err != nil {
		return fmt.Errorf("authority: %w", err)
	}
	h := newBenchHost(auth, store, "bench")
	defer h.Close()
	pub, err := newBenchPublisher(h)
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	if err := store.CreateTable(storage.RevokedCertsTable); err != nil {
		return err
	}
	now := time.Now().UTC()
	have := 0
	for _, n := range sizes {
		st := crlStep{Entries: n}
		t0 := time.Now()
		const batch = 100_000
		for have < n {
			tx := &database.Tx{Operations: make([]*database.TxEntry, 0, batch)}
			for ; have < n && len(tx.Operations) < batch; have++ {
				// Increasing 128-bit serials (bbolt appends fastest in key
				// order; the publisher does not care about the order).
				sn := new(big.Int).Lsh(big.NewInt(1), 126)
				sn.Add(sn, big.NewInt(int64(have)*1_000_003))
				b, _ := json.Marshal(&db.RevokedCertificateInfo{
					Serial: sn.String(), ProvisionerID: "bench-provisioner-id", ReasonCode: 1, Reason: "bench",
					RevokedAt: now, ExpiresAt: now.Add(30 * 24 * time.Hour), TokenID: "bench-token-id",
				})
				tx.Set(storage.RevokedCertsTable, []byte(sn.String()), b)
			}
			if err := store.Update(tx); err != nil {
				return fmt.Errorf("populate: %w", err)
			}
		}
		st.PopulateSec = time.Since(t0).Seconds()
		if fi, err := os.Stat(dbPath); err == nil {
			st.DBBytes = fi.Size()
		}

		st.RSSBefore, st.HWMReset = settle()
		st.PublishSec, err = timed(pub.Publish)
		if err != nil {
			return fmt.Errorf("publish %d entries: %w", n, err)
		}
		st.RSSAfter, st.PeakDuring, _ = benchproc.ProcMemory("self")
		st.ScanEncodeSec, st.SignSec, st.StoreSec = h.published["scanSeconds"], h.published["signSeconds"], h.published["storeSeconds"]

		// Check what was stored (outside the measurement).
		if st.CRLBytes, st.CRLEntries, err = storedCRL(store); err != nil {
			return err
		}

		// The table read alone.
		st.ForEachBefore, _ = settle()
		rows := 0
		st.ForEachSec, err = timed(func() error {
			return storage.ForEach(store, storage.RevokedCertsTable, func(_, _ []byte) error { rows++; return nil })
		})
		if err != nil {
			return err
		}
		_, st.ForEachPeak, _ = benchproc.ProcMemory("self")
		if rows != n {
			return fmt.Errorf("table has %d rows, want %d", rows, n)
		}

		// Steady state, then another replica's first read.
		settle()
		if st.AgainSec, err = timed(pub.Publish); err != nil {
			return err
		}
		_, st.AgainPeak, _ = benchproc.ProcMemory("self")
		otherHost := newBenchHost(auth, store, "other")
		defer otherHost.Close()
		other, err := newBenchPublisher(otherHost)
		if err != nil {
			return err
		}
		st.ReloadSec, err = timed(func() error {
			w := httptest.NewRecorder()
			other.ServeCRL(w, httptest.NewRequest("GET", "/1.0/crl", nil))
			if w.Code != 200 || w.Body.Len() == 0 {
				return fmt.Errorf("other replica's CRL: %d, %d bytes", w.Code, w.Body.Len())
			}
			return nil
		})
		if err != nil {
			return err
		}

		b, _ := json.Marshal(st)
		fmt.Printf("CRLSTEP %s\n", b)
	}
	return nil
}

// settle collects garbage, returns the RSS and resets VmHWM (reporting
// whether it could).
func settle() (rss float64, reset bool) {
	runtime.GC()
	debug.FreeOSMemory()
	rss, _, _ = benchproc.ProcMemory("self")
	return rss, os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

func timed(f func() error) (float64, error) {
	t0 := time.Now()
	err := f()
	return time.Since(t0).Seconds(), err
}

// storedCRL parses the published CRL (checking it is well formed) and
// returns its size and number of entries.
func storedCRL(store nosql.DB) (size, entries int, err error) {
	row, err := store.Get([]byte("x509_crl"), []byte("crl"))
	if err != nil {
		return 0, 0, fmt.Errorf("read published CRL: %w", err)
	}
	var info db.CertificateRevocationListInfo
	if err := json.Unmarshal(row, &info); err != nil {
		return 0, 0, err
	}
	crl, err := x509.ParseRevocationList(info.DER)
	if err != nil {
		return 0, 0, fmt.Errorf("parse published CRL: %w", err)
	}
	return len(info.DER), len(crl.RevokedCertificateEntries), nil
}
