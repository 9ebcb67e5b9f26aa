package inventory

import (
	"fmt"
	"sync"
	"testing"
)

// TestConcurrentClaimsOneWinner: replicas that register the same new
// identifier at once, through the API or an import, never both win it. On
// PostgreSQL nosql's compare-and-swap with an absent row locks nothing, so
// this needs storage.CmpAndSwap / storage.Update.
func TestConcurrentClaimsOneWinner(t *testing.T) {
	const replicas, rounds = 6, 25
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			db := openDB(t, backend)
			stores := make([]*Store, replicas)
			for i := range stores {
				s, err := NewStore(db, nil)
				if err != nil {
					t.Fatal(err)
				}
				stores[i] = s
			}
			race := func(name string, fn func(s *Store, pid string) bool) {
				for round := range rounds {
					pid := fmt.Sprintf("%s-%d", name, round)
					var wg sync.WaitGroup
					wins := make(chan bool, replicas)
					for _, s := range stores {
						wg.Add(1)
						go func() { defer wg.Done(); wins <- fn(s, pid) }()
					}
					wg.Wait()
					close(wins)
					n := 0
					for w := range wins {
						if w {
							n++
						}
					}
					if n != 1 {
						t.Fatalf("%s: %d replicas claimed %s, want 1", name, n, pid)
					}
				}
			}
			race("create", func(s *Store, pid string) bool {
				_, err := s.Create(DeviceInput{Identifiers: []string{pid}})
				return err == nil
			})
			race("import", func(s *Store, pid string) bool {
				rep, err := s.Import([]ImportRow{{Line: 2, Input: DeviceInput{Identifiers: []string{pid}}}}, "")
				return err == nil && rep.Accepted == 1
			})
		})
	}
}
