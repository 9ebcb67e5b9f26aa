package inventory

import (
	"encoding/json"
	"testing"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
)

// backends are the databases the tests run on.
var backends = testenv.Backends

func TestMain(m *testing.M) { testenv.RunMain(m) }

// openDB opens a fresh, empty database on backend.
func openDB(t *testing.T, backend string) nosql.DB { return testenv.OpenStore(t, backend) }

// racingDB runs before, once, ahead of the next transaction: another
// writer that changes a row between the store's read and its write.
type racingDB struct {
	innerDB // not "DB": storage.Unwrap must not see through it to the SQL pool
	before  func()
}

// innerDB is nosql.DB under another field name.
type innerDB = nosql.DB

func (r *racingDB) Update(tx *database.Tx) error {
	if f := r.before; f != nil {
		r.before = nil
		f()
	}
	return storage.Update(r.innerDB, tx)
}

// rename changes a device's name behind the store's back.
func rename(t *testing.T, db nosql.DB, id, name string) {
	t.Helper()
	setStored(t, db, id, func(d *Device) { d.Name = name })
}

// setStored rewrites a stored device record with fn applied.
func setStored(t *testing.T, db nosql.DB, id string, fn func(d *Device)) {
	t.Helper()
	b, err := db.Get(DevicesTable, []byte(id))
	if err != nil {
		t.Fatal(err)
	}
	var d Device
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	fn(&d)
	b, _ = json.Marshal(d)
	if err := db.Set(DevicesTable, []byte(id), b); err != nil {
		t.Fatal(err)
	}
}
