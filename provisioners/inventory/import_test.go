package inventory

import (
	"strings"
	"testing"

	"github.com/stepfort/stepfort/plugins"
)

func TestImportCSVWithMapping(t *testing.T) {
	s := newTestStore(t)
	if _, err := s.CreateCollection(Collection{Name: "macs"}); err != nil {
		t.Fatal(err)
	}
	ek, urn := ekPEM(t)
	ekB64 := strings.Join(strings.Split(strings.TrimSpace(ek), "\n")[1:len(strings.Split(strings.TrimSpace(ek), "\n"))-1], "")
	csvData := "Serial Number,Device Name,Group,EK,Assigned User,Site\n" +
		"C02AAA,mac-a,macs,,alice,Berlin\n" +
		"C02BBB,mac-b,macs," + ekB64 + ",bob,Paris\n" +
		",no-serial,macs,,carol,Rome\n" +
		"C02CCC,mac-c,unknown-group,,dave,Oslo\n" +
		"C02DDD,mac-d,macs,not-an-ek,erin,Oslo\n"
	m, err := ParseMapping("serial:Serial Number,name:Device Name,collection:Group,ekPublic:EK,owner:Assigned User,metadata.site:Site")
	if err != nil {
		t.Fatal(err)
	}
	rows, ignored, err := ParseCSV(strings.NewReader(csvData), m, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(ignored) != 0 {
		t.Fatalf("ignored %v", ignored)
	}
	rep, err := s.Import(rows, "import:jamf")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{RowAccepted, RowAccepted, RowRejected, RowRejected, RowRejected}
	for i, w := range want {
		if rep.Rows[i].Status != w {
			t.Errorf("row %d (line %d): got %s (%s), want %s", i, rep.Rows[i].Line, rep.Rows[i].Status, rep.Rows[i].Reason, w)
		}
	}
	if rep.Rows[3].Reason == "" || !strings.Contains(rep.Rows[3].Reason, "collection") {
		t.Errorf("reason for unknown collection: %q", rep.Rows[3].Reason)
	}
	if rep.Accepted != 2 || rep.Updated != 0 || rep.Rejected != 3 {
		t.Fatalf("counts %+v", rep)
	}
	d, err := s.ByIdentifier(urn)
	if err != nil || d.Name != "mac-b" || d.Metadata["site"] != "Paris" || d.Source != "import:jamf" {
		t.Fatalf("imported device %+v %v", d, err)
	}
	// Re-import is idempotent: nothing is created or changed.
	rows, _, _ = ParseCSV(strings.NewReader(csvData), m, 100)
	rep2, err := s.Import(rows, "import:jamf")
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Accepted != 0 || rep2.Updated != 0 || rep2.Unchanged != 2 || rep2.Rejected != 3 {
		t.Fatalf("re-import counts %+v", rep2)
	}
	// A changed row updates the device it is keyed to, in the same file as a
	// row that creates a device and a second row for that new device.
	rows, _, _ = ParseCSV(strings.NewReader("Serial Number,Device Name,Group,EK,Assigned User,Site\nC02AAA,mac-a2,,,,\nC02EEE,mac-e,,,,\nC02EEE,,,,frank,\n"), m, 100)
	rep3, err := s.Import(rows, "import:jamf")
	if err != nil || rep3.Updated != 2 || rep3.Accepted != 1 {
		t.Fatalf("update import %+v %v", rep3, err)
	}
	if d, _ := s.ByIdentifier("C02AAA"); d.Name != "mac-a2" || d.Owner != "alice" {
		t.Fatalf("merge: %+v", d)
	}
	if d, _ := s.ByIdentifier("C02EEE"); d.Owner != "frank" {
		t.Fatalf("merge of a row created in the same import: %+v", d)
	}
	devs, _, _ := s.List(ListOptions{Limit: 1000})
	if len(devs) != 3 {
		t.Fatalf("%d devices after re-import", len(devs))
	}
}

func TestImportKeepsStatusAndRejects(t *testing.T) {
	s := newTestStore(t)
	rows, _, err := ParseCSV(strings.NewReader("identifier,name,status\nA,a,disabled\nB,b,\nC,c,broken\n"), nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Import(rows, "")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Accepted != 2 || rep.Rejected != 1 {
		t.Fatalf("%+v", rep)
	}
	// A row without status does not re-enable a disabled device.
	rows, _, _ = ParseCSV(strings.NewReader("identifier,name\nA,a\n"), nil, 10)
	if rep, err = s.Import(rows, ""); err != nil || rep.Unchanged != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	if d, _ := s.ByIdentifier("A"); d.Status != StatusDisabled {
		t.Fatalf("status changed to %s", d.Status)
	}
	tests := []struct {
		name, csv, mapping string
	}{
		{"unknown field", "a\n1\n", "nope:a"},
		{"missing column", "a\n1\n", "serial:b"},
		{"no usable column", "x,y\n1,2\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseMapping(tt.mapping)
			if err == nil {
				_, _, err = ParseCSV(strings.NewReader(tt.csv), m, 10)
			}
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, _, err := ParseCSV(strings.NewReader("identifier\n1\n2\n3\n"), nil, 2); err == nil {
		t.Fatal("row limit not enforced")
	}
}

// TestImportThatDisablesRecordsEvents: a row that disables an active
// device records one device event in its batch's transaction; rows that
// keep devices active record none.
func TestImportThatDisablesRecordsEvents(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			s, rec := newEventStore(t, openDB(t, backend))
			rows, _, err := ParseCSV(strings.NewReader("identifier,name,status\nA,a,active\nB,b,active\n"), nil, 10)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Import(rows, ""); err != nil {
				t.Fatal(err)
			}
			if got := rec.identifiers(t); len(got) != 0 {
				t.Fatalf("events recorded for active devices: %v", got)
			}
			rows, _, _ = ParseCSV(strings.NewReader("identifier,name,status\nA,a,disabled\nB,b,active\n"), nil, 10)
			if rep, err := s.Import(rows, ""); err != nil || rep.Updated != 1 {
				t.Fatalf("%+v %v", rep, err)
			}
			if got := strings.Join(rec.identifiers(t), ","); got != "A" {
				t.Fatalf("events for %v, want the device the import disabled", got)
			}
			ev := rec.Added[0]
			if ev.Kind != plugins.DeviceDisabled {
				t.Fatalf("kind %s", ev.Kind)
			}
			rec.assertCommitted(t, s.db, ev.ID)
			if len(rec.Announced) != 1 || rec.Announced[0] != ev.ID || len(rec.Discarded) != 0 {
				t.Fatalf("announced %v, discarded %v, want %s announced", rec.Announced, rec.Discarded, ev.ID)
			}
			// Importing the same file again disables nothing new.
			rows, _, _ = ParseCSV(strings.NewReader("identifier,name,status\nA,a,disabled\n"), nil, 10)
			if rep, err := s.Import(rows, ""); err != nil || rep.Unchanged != 1 || len(rec.Added) != 1 {
				t.Fatalf("re-import: %+v %v, %d events", rep, err, len(rec.Added))
			}
		})
	}
}

// TestImportLostRaceDiscardsEvent: a row that disables a device changed by
// another writer between the import's read and its batch is rejected, and
// its event is discarded, not announced.
func TestImportLostRaceDiscardsEvent(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			db := &racingDB{innerDB: openDB(t, backend)}
			s, rec := newEventStore(t, db)
			d, err := s.Create(DeviceInput{Identifiers: []string{"A"}, Name: "a"})
			if err != nil {
				t.Fatal(err)
			}
			db.before = func() { rename(t, db.innerDB, d.ID, "renamed elsewhere") }
			rows, _, _ := ParseCSV(strings.NewReader("identifier,status\nA,disabled\n"), nil, 10)
			rep, err := s.Import(rows, "")
			if err != nil {
				t.Fatal(err)
			}
			if rep.Rejected != 1 || rep.Updated != 0 || !strings.Contains(rep.Rows[0].Reason, "changed concurrently") {
				t.Fatalf("report %+v", rep)
			}
			if len(rec.Added) != 1 || len(rec.Discarded) != 1 || rec.Discarded[0] != rec.Added[0].ID || len(rec.Announced) != 0 {
				t.Fatalf("added %v, announced %v, discarded %v", rec.Added, rec.Announced, rec.Discarded)
			}
			if got, _ := s.Get(d.ID); !got.Active() || got.Name != "renamed elsewhere" {
				t.Fatalf("device %+v", got)
			}
		})
	}
}
