package events

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/plugins"
)

// Two replicas revoking the same serial at the same moment: exactly one
// revocation is stored and announced, the other gets ErrAlreadyExists,
// with and without observers. On PostgreSQL nosql's compare-and-swap
// locks no absent row, so both used to win and the second overwrote the
// first's record.
func TestConcurrentRevocationsHaveOneWinner(t *testing.T) {
	pg := testenv.StartPostgres(t)
	for _, withObserver := range []bool{false, true} {
		t.Run(fmt.Sprintf("observer=%v", withObserver), func(t *testing.T) {
			name := fmt.Sprintf("revoke_race_%v", withObserver)
			replicas := make([]*DB, 2)
			for i := range replicas {
				base, err := db.New(&db.Config{Type: "postgresql", DataSource: pg.DSN(), Database: name})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { base.Shutdown() })
				var outbox *Outbox
				if withObserver {
					outbox = NewOutbox(base.(*db.DB), []Observer{{Name: "r", Certificate: &recorder{}}}, OutboxOptions{Replica: fmt.Sprint(i), ClaimTTL: time.Minute, RetryInterval: time.Minute})
				}
				if replicas[i], err = NewDB(base.(*db.DB), outbox, nil); err != nil {
					t.Fatal(err)
				}
			}
			for round := range 40 {
				serial := fmt.Sprintf("%d%d", round+1, time.Now().UnixNano())
				var wg sync.WaitGroup
				errs := make([]error, len(replicas))
				for i, d := range replicas {
					wg.Add(1)
					go func() {
						defer wg.Done()
						errs[i] = d.Revoke(&db.RevokedCertificateInfo{Serial: serial, ReasonCode: i + 1, RevokedAt: time.Now().UTC()})
					}()
				}
				wg.Wait()
				won := 0
				for _, err := range errs {
					switch {
					case err == nil:
						won++
					case !errors.Is(err, db.ErrAlreadyExists):
						t.Fatalf("round %d: %v", round, err)
					}
				}
				if won != 1 {
					t.Fatalf("round %d: %d replicas revoked serial %s, want exactly 1", round, won, serial)
				}
			}
			_ = plugins.EventRevoked
		})
	}
}
