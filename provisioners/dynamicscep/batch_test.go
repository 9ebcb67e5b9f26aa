package dynamicscep

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/testenv"
)

// TestCreateConcurrent: 200 concurrent creations (group-committed) are
// 200 distinct stored challenges, each consumable exactly once.
func TestCreateConcurrent(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			s, err := NewChallenges(testenv.OpenStore(t, backend))
			if err != nil {
				t.Fatal(err)
			}
			const n = 200
			now := time.Now().UTC()
			secrets := make([]string, n)
			ids := make([]string, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					c := &Challenge{Provisioner: "scep", Source: SourceAPI, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
					secrets[i], errs[i] = s.Create(c)
					ids[i] = c.ID
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if len(unique(secrets)) != n || len(unique(ids)) != n {
				t.Fatalf("%d distinct challenges, %d distinct IDs, want %d", len(unique(secrets)), len(unique(ids)), n)
			}
			stored := 0
			if err := s.ForEach(func(*Challenge) error { stored++; return nil }); err != nil {
				t.Fatal(err)
			}
			if stored != n {
				t.Fatalf("%d stored, want %d", stored, n)
			}
			for i, secret := range secrets {
				c, old, err := s.Lookup(secret)
				if err != nil {
					t.Fatalf("lookup %d: %v", i, err)
				}
				if c.ID != ids[i] || c.State != StateOutstanding {
					t.Fatalf("challenge %d: id %s state %s, want %s outstanding", i, c.ID, c.State, ids[i])
				}
				if byID, _, err := s.ByID(ids[i]); err != nil || byID.Hash != c.Hash {
					t.Fatalf("by id %s: %v", ids[i], err)
				}
				if err := s.Consume(c, old, "tx", now); err != nil {
					t.Fatalf("consume %d: %v", i, err)
				}
				if err := s.Consume(c, old, "tx2", now); !errors.Is(err, ErrConsumed) {
					t.Fatalf("second consume %d: %v, want ErrConsumed", i, err)
				}
			}
		})
	}
}

func unique(v []string) []string {
	v = slices.Clone(v)
	slices.Sort(v)
	return slices.Compact(v)
}

// innerDB is nosql.DB under another name, so storage.Unwrap does not see
// through gatedDB (on PostgreSQL it would bypass Update).
type innerDB interface{ nosql.DB }

// gatedDB fails every Update; the first one waits for release, so the
// callers that arrive meanwhile queue behind it. It records the entries
// of each Update.
type gatedDB struct {
	innerDB
	entered chan struct{}
	release chan struct{}

	mu    sync.Mutex
	sizes []int
}

var errInjected = errors.New("injected database failure")

func (g *gatedDB) Update(tx *database.Tx) error {
	g.mu.Lock()
	first := len(g.sizes) == 0
	g.sizes = append(g.sizes, len(tx.Operations))
	g.mu.Unlock()
	if first {
		close(g.entered)
		<-g.release
	}
	return errInjected
}

// TestCreateBatchError: while one commit is in flight, 299 creations
// queue into batches of at most maxCreateBatch; the database's error
// reaches every caller, and nothing is left waiting.
func TestCreateBatchError(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			g := &gatedDB{entered: make(chan struct{}), release: make(chan struct{})}
			store := testenv.OpenStore(t, backend)
			if _, err := NewChallenges(store); err != nil { // tables
				t.Fatal(err)
			}
			g.innerDB = store
			s := &Challenges{db: g, creates: createBatcher{db: g}}
			const n = 300
			errs := make([]error, n)
			create := func(i int) {
				now := time.Now()
				_, errs[i] = s.Create(&Challenge{Provisioner: "scep", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
			}
			var wg sync.WaitGroup
			wg.Go(func() { create(0) })
			waitFor(t, g.entered)
			for i := 1; i < n; i++ {
				wg.Go(func() { create(i) })
			}
			// The rest fill one full batch and open another.
			rest := n - 1 - maxCreateBatch
			deadline := time.Now().Add(10 * time.Second)
			for queued(s) != rest {
				if time.Now().After(deadline) {
					t.Fatalf("%d queued in the open batch, want %d", queued(s), rest)
				}
				time.Sleep(time.Millisecond)
			}
			close(g.release)
			wg.Wait()
			for i, err := range errs {
				if !errors.Is(err, errInjected) {
					t.Fatalf("caller %d: %v, want the database's error", i, err)
				}
			}
			slices.Sort(g.sizes)
			if want := []int{2, 2 * rest, 2 * maxCreateBatch}; !slices.Equal(g.sizes, want) {
				t.Fatalf("transactions of %v entries, want %v", g.sizes, want)
			}
		})
	}
}

// queued is the number of challenges in the open batch.
func queued(s *Challenges) int {
	s.creates.mu.Lock()
	defer s.creates.mu.Unlock()
	if s.creates.pending == nil {
		return 0
	}
	return s.creates.pending.count
}

func waitFor(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
	}
}
