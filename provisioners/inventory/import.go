package inventory

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/plugins"
)

// Row outcomes in an import report.
const (
	RowAccepted  = "accepted"  // a new device was created
	RowUpdated   = "updated"   // an existing device (same permanent identifier) changed
	RowUnchanged = "unchanged" // an existing device already had these values
	RowRejected  = "rejected"  // nothing was written; Reason says why
)

// ImportRow is one parsed input row. Err is set when the row could not be
// parsed (it is then reported as rejected).
type ImportRow struct {
	Line  int
	Input DeviceInput
	Err   error
}

// RowResult is the outcome of one row.
type RowResult struct {
	Line       int    `json:"line"`
	Status     string `json:"status"`
	DeviceID   string `json:"deviceId,omitempty"`
	Identifier string `json:"identifier,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// ImportReport is the answer of an import: counts and one result per row.
type ImportReport struct {
	Total          int         `json:"total"`
	Accepted       int         `json:"accepted"`
	Updated        int         `json:"updated"`
	Unchanged      int         `json:"unchanged"`
	Rejected       int         `json:"rejected"`
	IgnoredColumns []string    `json:"ignoredColumns,omitempty"`
	Rows           []RowResult `json:"rows"`
}

// Fields an import column can map to. "identifier" may be mapped from
// several columns; "metadata.<key>" stores a column as free metadata.
var importFields = []string{"identifier", "ekPublic", "ekCertificate", "name", "type", "os", "serial", "collection", "owner", "status"}

// Mapping maps device fields to CSV column headers.
type Mapping []struct{ Field, Column string }

// ParseMapping parses "field:Column Header,field2:Other" (the ?map=
// parameter). Field names are case-insensitive.
func ParseMapping(s string) (Mapping, error) {
	var m Mapping
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, pair := range strings.Split(s, ",") {
		f, col, ok := strings.Cut(pair, ":")
		f, col = strings.TrimSpace(f), strings.TrimSpace(col)
		if !ok || f == "" || col == "" {
			return nil, fmt.Errorf("map: %q is not field:Column", pair)
		}
		field, ok := canonicalField(f)
		if !ok {
			return nil, fmt.Errorf("map: unknown field %q (use one of %s or metadata.<key>)", f, strings.Join(importFields, ", "))
		}
		m = append(m, struct{ Field, Column string }{field, col})
	}
	return m, nil
}

func canonicalField(f string) (string, bool) {
	if k, ok := strings.CutPrefix(f, "metadata."); ok && k != "" {
		return "metadata." + k, true
	}
	for _, x := range importFields {
		if strings.EqualFold(x, f) {
			return x, true
		}
	}
	return "", false
}

// ParseCSV reads a CSV with a header row. Without a mapping, headers named
// like fields (case-insensitive) are used and others ignored; with one,
// only mapped columns are used. maxRows bounds the rows read.
func ParseCSV(r io.Reader, m Mapping, maxRows int) ([]ImportRow, []string, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil {
		return nil, nil, fmt.Errorf("read CSV header: %w", err)
	}
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\ufeff") // Excel BOM
	}
	type col struct {
		idx   int
		field string
	}
	var cols []col
	var ignored []string
	used := map[int]bool{}
	if m == nil {
		for i, h := range header {
			if f, ok := canonicalField(strings.TrimSpace(h)); ok {
				cols = append(cols, col{i, f})
				used[i] = true
			}
		}
	} else {
		for _, p := range m {
			found := false
			for i, h := range header {
				if strings.EqualFold(strings.TrimSpace(h), p.Column) {
					cols = append(cols, col{i, p.Field})
					used[i] = true
					found = true
				}
			}
			if !found {
				return nil, nil, fmt.Errorf("map: column %q is not in the CSV header", p.Column)
			}
		}
	}
	for i, h := range header {
		if !used[i] {
			ignored = append(ignored, h)
		}
	}
	if len(cols) == 0 {
		return nil, ignored, errors.New("no CSV column maps to a device field: name columns after fields or pass a mapping")
	}
	var rows []ImportRow
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if len(rows) >= maxRows {
			return nil, ignored, fmt.Errorf("more than %d rows", maxRows)
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) && pe.Err != csv.ErrFieldCount {
				rows = append(rows, ImportRow{Line: line, Err: fmt.Errorf("CSV: %v", pe.Err)})
				continue
			}
			return nil, ignored, fmt.Errorf("read CSV line %d: %w", line, err)
		}
		var in DeviceInput
		for _, c := range cols {
			if c.idx >= len(rec) {
				continue
			}
			setField(&in, c.field, strings.TrimSpace(rec[c.idx]))
		}
		rows = append(rows, ImportRow{Line: line, Input: in})
	}
	return rows, ignored, nil
}

func setField(in *DeviceInput, field, v string) {
	if v == "" {
		return
	}
	switch field {
	case "identifier":
		in.Identifiers = append(in.Identifiers, v)
	case "ekPublic":
		in.EKPublic = v
	case "ekCertificate":
		in.EKCert = v
	case "name":
		in.Name = v
	case "type":
		in.Type = v
	case "os":
		in.OS = v
	case "serial":
		in.Serial = v
	case "collection":
		in.Collection = v
	case "owner":
		in.Owner = v
	case "status":
		in.Status = Status(strings.ToLower(v))
	default:
		if k, ok := strings.CutPrefix(field, "metadata."); ok {
			if in.Metadata == nil {
				in.Metadata = map[string]string{}
			}
			in.Metadata[k] = v
		}
	}
}

// ParseJSONRows reads a JSON array of DeviceInput (or {"devices": [...]}).
func ParseJSONRows(r io.Reader, maxRows int) ([]ImportRow, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	data = bytes.TrimSpace(data)
	var list []json.RawMessage
	if len(data) > 0 && data[0] == '{' {
		var wrap struct {
			Devices []json.RawMessage `json:"devices"`
		}
		if err := json.Unmarshal(data, &wrap); err != nil {
			return nil, fmt.Errorf("JSON: %w", err)
		}
		list = wrap.Devices
	} else if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("JSON: %w", err)
	}
	if len(list) > maxRows {
		return nil, fmt.Errorf("more than %d rows", maxRows)
	}
	rows := make([]ImportRow, len(list))
	for i, raw := range list {
		rows[i].Line = i + 1
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rows[i].Input); err != nil {
			rows[i].Err = fmt.Errorf("JSON: %v", err)
		}
	}
	return rows, nil
}

// importBatch is how many rows go into one database transaction.
const importBatch = 500

// Import upserts rows keyed by permanent identifier: a row whose
// identifiers (or EK) match a registered device updates it (fields given in
// the row replace stored ones), otherwise it creates a device. Importing the
// same file twice leaves the inventory unchanged the second time.
//
// Writes are batched in transactions; identifier claims are
// compare-and-swap operations inside them, so a device created concurrently
// elsewhere with the same identifier makes the row rejected, never a
// duplicate. A row that disables an active device records a
// plugins.DeviceDisabled event in its batch's transaction (WithEvents).
func (s *Store) Import(rows []ImportRow, source string) (*ImportReport, error) {
	s.importMu.Lock()
	defer s.importMu.Unlock()
	if source == "" {
		source = "import"
	}
	im, err := s.newImporter(source)
	if err != nil {
		return nil, err
	}
	rep := &ImportReport{Total: len(rows), Rows: make([]RowResult, len(rows))}
	for i, row := range rows {
		res, w, err := im.plan(row)
		if err != nil {
			return nil, err
		}
		rep.set(i, res)
		if w == nil {
			continue
		}
		w.row = i
		if err := im.add(w); err != nil {
			return nil, err
		}
		if len(im.batch) >= importBatch {
			if err := im.flush(rep); err != nil {
				return nil, err
			}
		}
	}
	if err := im.flush(rep); err != nil {
		return nil, err
	}
	return rep, nil
}

// set records the result of row i and counts it.
func (rep *ImportReport) set(i int, res RowResult) {
	rep.Rows[i] = res
	switch res.Status {
	case RowAccepted:
		rep.Accepted++
	case RowUpdated:
		rep.Updated++
	case RowUnchanged:
		rep.Unchanged++
	case RowRejected:
		rep.Rejected++
	}
}

// rejectLost turns row i, whose write lost a race, into a rejected row.
func (rep *ImportReport) rejectLost(i int) {
	r := &rep.Rows[i]
	switch r.Status {
	case RowAccepted:
		rep.Accepted--
	case RowUpdated:
		rep.Updated--
	}
	r.Status, r.Reason, r.DeviceID = RowRejected, "changed concurrently by another writer; import again", ""
	rep.Rejected++
}

// importer is the state of one import: what it knows of the inventory
// (read once at the start, then kept up to date with its own writes, as if
// every write lands) and the batch being built.
type importer struct {
	s           *Store
	source      string
	now         time.Time
	index       map[string]string // identifier -> device ID
	collections map[string]bool
	// devices holds what this import has seen: rows created so far and,
	// after the first match against an existing device, the whole table.
	devices map[string]*Device
	stored  map[string][]byte // device ID -> JSON as stored (for CAS)
	loaded  bool

	tx    database.Tx
	batch []*rowWrite
}

// rowWrite is what one accepted or updated row writes in its batch.
type rowWrite struct {
	row     int // index in the report
	created bool
	id      string
	claims  []*database.TxEntry // identifier claims
	device  *database.TxEntry   // Set of a new device, CmpAndSwap of an update
	// event is the plugins.DeviceDisabled event of a row that disabled an
	// active device, nil otherwise.
	event *plugins.DeviceEvent
}

// deviceWritten reports whether the device record was written: a Set
// always is, a compare-and-swap only if it swapped.
func (w *rowWrite) deviceWritten() bool {
	return w.device.Cmd != database.CmpAndSwap || w.device.Swapped
}

// landed reports whether every write of the row took effect.
func (w *rowWrite) landed() bool {
	ok := w.deviceWritten()
	for _, c := range w.claims {
		ok = ok && c.Swapped
	}
	return ok
}

func (s *Store) newImporter(source string) (*importer, error) {
	im := &importer{s: s, source: source, now: s.now().UTC(), index: map[string]string{}, collections: map[string]bool{},
		devices: map[string]*Device{}, stored: map[string][]byte{}}
	entries, err := s.db.List(IdentifiersTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("load identifier index: %w", err)
	}
	for _, e := range entries {
		im.index[string(e.Key)] = string(e.Value)
	}
	cs, err := s.ListCollections()
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		im.collections[c.Name] = true
	}
	return im, nil
}

// loadDevices reads the whole devices table, once, the first time a row
// matches a registered device (an import of new devices never needs it).
func (im *importer) loadDevices() error {
	if im.loaded {
		return nil
	}
	im.loaded = true
	es, err := im.s.db.List(DevicesTable)
	if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("load devices: %w", err)
	}
	for _, e := range es {
		var d Device
		if _, seen := im.devices[string(e.Key)]; !seen && json.Unmarshal(e.Value, &d) == nil {
			im.devices[d.ID] = &d
			im.stored[d.ID] = e.Value
		}
	}
	return nil
}

// rejected returns res as a rejected row.
func rejected(res RowResult, format string, args ...any) (RowResult, *rowWrite, error) {
	res.Status, res.Reason = RowRejected, fmt.Sprintf(format, args...)
	return res, nil, nil
}

// plan decides what one row does: its result and, for a row that creates
// or changes a device, the write. An error (the devices table cannot be
// read) ends the import.
func (im *importer) plan(row ImportRow) (RowResult, *rowWrite, error) {
	res := RowResult{Line: row.Line}
	if row.Err != nil {
		return rejected(res, "%v", row.Err)
	}
	in := row.Input
	in.Source = im.source
	d, err := in.build()
	if err != nil {
		if len(in.Identifiers) > 0 {
			res.Identifier = in.Identifiers[0]
		}
		return rejected(res, "%v", err)
	}
	res.Identifier = d.Identifiers[0]
	if d.Collection != "" && !im.collections[d.Collection] {
		return rejected(res, "collection %q does not exist", d.Collection)
	}
	owner, ok := im.owner(d.Identifiers)
	if !ok {
		return rejected(res, "identifiers belong to different devices")
	}
	if owner == "" {
		w := im.create(d)
		res.Status, res.DeviceID = RowAccepted, d.ID
		return res, w, nil
	}
	if err := im.loadDevices(); err != nil {
		return res, nil, err
	}
	cur, found := im.devices[owner]
	if !found {
		return rejected(res, "identifier index points at missing device %s", owner)
	}
	if in.Status == "" {
		d.Status = "" // absent from the row: keep the stored status
	}
	merged, err := merge(cur, d)
	if err != nil {
		return rejected(res, "%v", err)
	}
	res.DeviceID = cur.ID
	if sameDevice(cur, merged) {
		res.Status = RowUnchanged
		return res, nil, nil
	}
	res.Status = RowUpdated
	return res, im.update(cur, merged), nil
}

// owner returns the ID of the device that holds the identifiers ("" for
// none), or false if they belong to different devices.
func (im *importer) owner(pids []string) (string, bool) {
	owner := ""
	for _, pid := range pids {
		if id, held := im.index[pid]; held {
			if owner != "" && owner != id {
				return "", false
			}
			owner = id
		}
	}
	return owner, true
}

// create plans a new device: claims of all its identifiers and the record.
func (im *importer) create(d *Device) *rowWrite {
	d.ID = newID()
	d.CreatedAt, d.UpdatedAt = im.now, im.now
	w := &rowWrite{created: true, id: d.ID, claims: im.claim(d.ID, d.Identifiers)}
	b, _ := json.Marshal(d)
	w.device = &database.TxEntry{Bucket: DevicesTable, Key: []byte(d.ID), Value: b, Cmd: database.Set}
	im.devices[d.ID], im.stored[d.ID] = d, b
	return w
}

// update plans the change of cur into merged: claims of its new
// identifiers and a compare-and-swap of the record against what this
// import last read or wrote, with the event if it disables the device.
func (im *importer) update(cur, merged *Device) *rowWrite {
	merged.UpdatedAt = im.now
	var unclaimed []string
	for _, pid := range merged.Identifiers {
		if _, held := im.index[pid]; !held {
			unclaimed = append(unclaimed, pid)
		}
	}
	w := &rowWrite{id: merged.ID, claims: im.claim(merged.ID, unclaimed)}
	b, _ := json.Marshal(merged)
	w.device = &database.TxEntry{Bucket: DevicesTable, Key: []byte(merged.ID), CmpValue: im.stored[merged.ID], Value: b, Cmd: database.CmpAndSwap}
	if cur.Active() && !merged.Active() {
		w.event = &plugins.DeviceEvent{Kind: plugins.DeviceDisabled, DeviceID: merged.ID, Device: b}
	}
	im.devices[merged.ID], im.stored[merged.ID] = merged, b
	return w
}

// claim returns the compare-and-swap entries (nil -> id) claiming pids
// and notes the claims in the index.
func (im *importer) claim(id string, pids []string) []*database.TxEntry {
	var out []*database.TxEntry
	for _, pid := range pids {
		im.index[pid] = id
		out = append(out, &database.TxEntry{Bucket: IdentifiersTable, Key: []byte(pid), Value: []byte(id), Cmd: database.CmpAndSwap})
	}
	return out
}

// add puts a row's writes, and its event, into the batch's transaction.
func (im *importer) add(w *rowWrite) error {
	im.tx.Operations = append(im.tx.Operations, w.claims...)
	im.tx.Operations = append(im.tx.Operations, w.device)
	if err := im.s.addEvent(&im.tx, w.event); err != nil {
		return err
	}
	im.batch = append(im.batch, w)
	return nil
}

// flush commits the batch, then settles each row: its event is announced
// if its device write landed and discarded if not, and a row that lost a
// race with a concurrent writer is undone and reported rejected.
func (im *importer) flush(rep *ImportReport) error {
	if len(im.tx.Operations) == 0 {
		return nil
	}
	if err := im.s.db.Update(&im.tx); err != nil {
		return fmt.Errorf("write import batch: %w", err)
	}
	for _, w := range im.batch {
		// The event follows the device write alone: a disabled record
		// that was stored stays disabled even if the row is undone.
		im.s.settleEvent(w.event, w.deviceWritten())
		if !w.landed() {
			im.undo(w)
			rep.rejectLost(w.row)
		}
	}
	im.batch, im.tx = nil, database.Tx{}
	return nil
}

// undo removes what a row that lost a race wrote: the device it created
// and the identifiers it claimed.
func (im *importer) undo(w *rowWrite) {
	if w.created {
		_ = im.s.db.Del(DevicesTable, []byte(w.id))
	}
	for _, c := range w.claims {
		if c.Swapped {
			_ = im.s.db.Del(IdentifiersTable, c.Key)
		}
	}
}

// merge applies the non-empty fields of row onto a copy of cur.
func merge(cur, row *Device) (*Device, error) {
	m := *cur
	m.Identifiers = append([]string(nil), cur.Identifiers...)
	if row.EKPublic != nil {
		if cur.EKPublic != nil && !bytes.Equal(cur.EKPublic, row.EKPublic) {
			return nil, fmt.Errorf("EK differs from the one registered for device %s; remove the device first", cur.ID)
		}
		m.EKPublic = row.EKPublic
	}
	if row.EKCert != nil {
		m.EKCert = row.EKCert
	}
	for _, pid := range row.Identifiers {
		if !contains(m.Identifiers, pid) {
			m.Identifiers = append(m.Identifiers, pid)
		}
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&m.Name, row.Name)
	set(&m.Type, row.Type)
	set(&m.OS, row.OS)
	set(&m.Serial, row.Serial)
	set(&m.Collection, row.Collection)
	set(&m.Owner, row.Owner)
	if row.Status != "" {
		m.Status = row.Status
	}
	if len(row.Metadata) > 0 {
		md := map[string]string{}
		for k, v := range cur.Metadata {
			md[k] = v
		}
		for k, v := range row.Metadata {
			md[k] = v
		}
		m.Metadata = md
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// sameDevice compares the admin-controlled fields (not times or source).
func sameDevice(a, b *Device) bool {
	x, y := *a, *b
	y.CreatedAt = x.CreatedAt
	y.UpdatedAt, y.Source, y.LastSeenAt, y.LastAttestation = x.UpdatedAt, x.Source, x.LastSeenAt, x.LastAttestation
	bx, _ := json.Marshal(x)
	by, _ := json.Marshal(y)
	return bytes.Equal(bx, by)
}
