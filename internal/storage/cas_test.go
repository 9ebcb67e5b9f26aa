package storage

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/testenv"
)

var casTable = []byte("stepfort_cas_test")

// replicaStores runs fn on bbolt (one handle: bbolt locks its file) and on a
// real PostgreSQL through two separate nosql connections to one database,
// like two replicas. Each store has casTable.
func replicaStores(t *testing.T, fn func(t *testing.T, dbs []nosql.DB)) {
	t.Run("bbolt", func(t *testing.T) {
		db, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		if err := db.CreateTable(casTable); err != nil {
			t.Fatal(err)
		}
		fn(t, []nosql.DB{db})
	})
	t.Run("postgresql", func(t *testing.T) {
		pg := testenv.StartPostgres(t)
		var dbs []nosql.DB
		for range 2 {
			db, err := nosql.New("postgresql", pg.DSN(), nosql.WithDatabase("castest"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			dbs = append(dbs, db)
		}
		if err := dbs[0].CreateTable(casTable); err != nil {
			t.Fatal(err)
		}
		fn(t, dbs)
	})
}

// outcome is what one racer saw.
type outcome struct {
	value, current []byte
	swapped        bool
}

// raceCreate has n writers, spread over dbs, create key at once with write
// and returns what each saw.
func raceCreate(t *testing.T, dbs []nosql.DB, n int, key string, write func(db nosql.DB, key, value []byte) ([]byte, bool, error)) []outcome {
	t.Helper()
	out := make([]outcome, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := fmt.Appendf(nil, "writer-%d", i)
			<-start
			cur, ok, err := write(dbs[i%len(dbs)], []byte(key), v)
			if err != nil {
				t.Error(err)
			}
			out[i] = outcome{value: v, current: cur, swapped: ok}
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// checkOneWinner: exactly one writer swapped, every loser was told the
// winner's value, and the winner's value is stored.
func checkOneWinner(t *testing.T, db nosql.DB, round int, key string, out []outcome) {
	t.Helper()
	var winners []outcome
	for _, o := range out {
		if o.swapped {
			winners = append(winners, o)
		}
	}
	if len(winners) != 1 {
		var names []string
		for _, w := range winners {
			names = append(names, string(w.value))
		}
		t.Fatalf("round %d: %d writers created %s (%v), want exactly one", round, len(winners), key, names)
	}
	w := winners[0].value
	for _, o := range out {
		if !o.swapped && !bytes.Equal(o.current, w) {
			t.Fatalf("round %d: loser %s got current %q, want the winner's %q", round, o.value, o.current, w)
		}
	}
	stored, err := db.Get(casTable, []byte(key))
	if err != nil || !bytes.Equal(stored, w) {
		t.Fatalf("round %d: stored %q (%v), winner %q", round, stored, err, w)
	}
}

const (
	raceWriters = 8
	raceRounds  = 60
)

// TestCmpAndSwapCreateRace: writers on two connections racing to create the
// same absent key with CmpAndSwap(nil -> value): exactly one wins, round
// after round. nosql's own compare-and-swap on PostgreSQL lets several win
// (SELECT ... FOR UPDATE locks nothing on an absent row, then it upserts).
func TestCmpAndSwapCreateRace(t *testing.T) {
	replicaStores(t, func(t *testing.T, dbs []nosql.DB) {
		for round := range raceRounds {
			key := fmt.Sprint("key-", round)
			out := raceCreate(t, dbs, raceWriters, key, func(db nosql.DB, k, v []byte) ([]byte, bool, error) {
				return CmpAndSwap(db, casTable, k, nil, v)
			})
			checkOneWinner(t, dbs[0], round, key, out)
		}
	})
}

// TestUpdateCreateRace: the same race through transactions (database.Tx
// with a Cas entry, as events.DB.Revoke and inventory imports write), each
// with a second entry that must be written whatever the Cas did.
func TestUpdateCreateRace(t *testing.T) {
	replicaStores(t, func(t *testing.T, dbs []nosql.DB) {
		for round := range raceRounds {
			key := fmt.Sprint("key-", round)
			out := raceCreate(t, dbs, raceWriters, key, func(db nosql.DB, k, v []byte) ([]byte, bool, error) {
				tx := new(database.Tx)
				tx.Cas(casTable, k, v)
				tx.Set(casTable, append([]byte("side-"), v...), k)
				if err := Update(db, tx); err != nil {
					return nil, false, err
				}
				return tx.Operations[0].Result, tx.Operations[0].Swapped, nil
			})
			checkOneWinner(t, dbs[0], round, key, out)
			for _, o := range out {
				side, err := dbs[0].Get(casTable, append([]byte("side-"), o.value...))
				if err != nil || string(side) != key {
					t.Fatalf("round %d: the other entry of %s's transaction: %q, %v", round, o.value, side, err)
				}
			}
		}
	})
}

// TestCmpAndSwapSemantics: storage.CmpAndSwap and storage.Update answer
// exactly what nosql's CmpAndSwap answers, case by case, on the same rows.
func TestCmpAndSwapSemantics(t *testing.T) {
	tests := []struct {
		name          string
		stored        []byte // nil: absent
		old, newValue []byte
	}{
		{"absent, compare nil", nil, nil, []byte("n")},
		{"absent, compare empty", nil, []byte{}, []byte("n")},
		{"absent, compare value", nil, []byte("x"), []byte("n")},
		{"present, compare nil", []byte("a"), nil, []byte("n")},
		{"present, compare same", []byte("a"), []byte("a"), []byte("n")},
		{"present, compare other", []byte("a"), []byte("b"), []byte("n")},
		{"empty value, compare nil", []byte{}, nil, []byte("n")},
		{"empty value, compare value", []byte{}, []byte("a"), []byte("n")},
	}
	type result struct {
		current []byte
		swapped bool
		stored  []byte
	}
	run := func(t *testing.T, db nosql.DB, key string, stored, old, nv []byte, cas func(k []byte) ([]byte, bool, error)) result {
		t.Helper()
		k := []byte(key)
		if stored != nil {
			if err := db.Set(casTable, k, stored); err != nil {
				t.Fatal(err)
			}
		}
		cur, ok, err := cas(k)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		after, err := db.Get(casTable, k)
		if err != nil && !database.IsErrNotFound(err) {
			t.Fatal(err)
		}
		return result{cur, ok, after}
	}
	same := func(a, b result) bool {
		return bytes.Equal(a.current, b.current) && a.swapped == b.swapped && bytes.Equal(a.stored, b.stored)
	}
	replicaStores(t, func(t *testing.T, dbs []nosql.DB) {
		db := dbs[0]
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				want := run(t, db, fmt.Sprint("nosql-", i), tt.stored, tt.old, tt.newValue, func(k []byte) ([]byte, bool, error) {
					return db.CmpAndSwap(casTable, k, tt.old, tt.newValue)
				})
				got := run(t, db, fmt.Sprint("ours-", i), tt.stored, tt.old, tt.newValue, func(k []byte) ([]byte, bool, error) {
					return CmpAndSwap(db, casTable, k, tt.old, tt.newValue)
				})
				if !same(got, want) {
					t.Errorf("CmpAndSwap = %+v, nosql = %+v", got, want)
				}
				got = run(t, db, fmt.Sprint("tx-", i), tt.stored, tt.old, tt.newValue, func(k []byte) ([]byte, bool, error) {
					tx := &database.Tx{Operations: []*database.TxEntry{
						{Cmd: database.CmpAndSwap, Bucket: casTable, Key: k, CmpValue: tt.old, Value: tt.newValue},
					}}
					err := Update(db, tx)
					return tx.Operations[0].Result, tx.Operations[0].Swapped, err
				})
				if !same(got, want) {
					t.Errorf("Update = %+v, nosql = %+v", got, want)
				}
			})
		}
	})
}

// TestUpdateOperations: the other entries of a transaction behave as in
// nosql (a Get of an absent key is ErrNotFound and rolls everything back).
func TestUpdateOperations(t *testing.T) {
	replicaStores(t, func(t *testing.T, dbs []nosql.DB) {
		db := dbs[0]
		tbl := []byte("stepfort_cas_ops")
		tx := new(database.Tx)
		tx.CreateTable(tbl)
		tx.Set(tbl, []byte("a"), []byte("1"))
		tx.Set(tbl, []byte("a"), []byte("2")) // overwrite
		tx.Set(tbl, []byte("b"), []byte("3"))
		tx.Del(tbl, []byte("b"))
		tx.Get(tbl, []byte("a"))
		if err := Update(db, tx); err != nil {
			t.Fatal(err)
		}
		if got := tx.Operations[5].Result; string(got) != "2" {
			t.Fatalf("Get in tx = %q", got)
		}
		if _, err := db.Get(tbl, []byte("b")); !database.IsErrNotFound(err) {
			t.Fatalf("deleted row: %v", err)
		}
		tx = new(database.Tx)
		tx.Set(tbl, []byte("c"), []byte("4"))
		tx.Get(tbl, []byte("missing"))
		if err := Update(db, tx); !database.IsErrNotFound(err) {
			t.Fatalf("Get of a missing key in tx: %v, want not found", err)
		}
		if _, err := db.Get(tbl, []byte("c")); !database.IsErrNotFound(err) {
			t.Fatalf("a failed transaction was partly written: %v", err)
		}
		tx = new(database.Tx)
		tx.Cmp(tbl, []byte("a"), []byte("2"))
		if err := Update(db, tx); err == nil { // nosql implements it nowhere
			t.Fatal("CmpOrRollback accepted")
		}
	})
}

// TestModifyJSONLosesNoUpdate: writers on two connections each add to the
// same record, created by the first of them: every addition survives.
func TestModifyJSONLosesNoUpdate(t *testing.T) {
	replicaStores(t, func(t *testing.T, dbs []nosql.DB) {
		type counter struct{ N []int }
		const writers, adds = 6, 10
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range adds {
					if _, err := ModifyJSON(dbs[w%len(dbs)], casTable, []byte("counter"), func(c *counter) bool {
						c.N = append(c.N, w*adds+i)
						return true
					}); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		got, err := ModifyJSON(dbs[0], casTable, []byte("counter"), func(*counter) bool { return false })
		if err != nil || len(got.N) != writers*adds {
			t.Fatalf("record holds %d additions (%v), want %d", len(got.N), err, writers*adds)
		}
	})
}
