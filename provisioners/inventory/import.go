package inventory

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/smallstep/nosql/database"
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
// duplicate.
func (s *Store) Import(rows []ImportRow, source string) (*ImportReport, error) {
	s.importMu.Lock()
	defer s.importMu.Unlock()
	if source == "" {
		source = "import"
	}
	rep := &ImportReport{Total: len(rows), Rows: make([]RowResult, len(rows))}

	index := map[string]string{} // identifier -> device ID
	entries, err := s.db.List(IdentifiersTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("load identifier index: %w", err)
	}
	for _, e := range entries {
		index[string(e.Key)] = string(e.Value)
	}
	collections := map[string]bool{}
	cs, err := s.ListCollections()
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		collections[c.Name] = true
	}
	// devices holds what this import has seen: rows created so far and,
	// after the first match against an existing device, the whole table.
	devices := map[string]*Device{}
	stored := map[string][]byte{} // device ID -> JSON as stored (for CAS)
	loaded := false
	loadDevices := func() error {
		if loaded {
			return nil
		}
		loaded = true
		es, err := s.db.List(DevicesTable)
		if err != nil && !database.IsErrNotFound(err) {
			return fmt.Errorf("load devices: %w", err)
		}
		for _, e := range es {
			var d Device
			if _, seen := devices[string(e.Key)]; !seen && json.Unmarshal(e.Value, &d) == nil {
				devices[d.ID] = &d
				stored[d.ID] = e.Value
			}
		}
		return nil
	}

	type pending struct {
		row     int
		created bool
		id      string
		cas     []*database.TxEntry // identifier claims
		devOp   *database.TxEntry
		// deactivated is the device this row disabled, for the listeners
		// (certificates of disabled devices are revoked).
		deactivated *Device
	}
	var batch []pending
	var tx database.Tx
	flush := func() error {
		if len(tx.Operations) == 0 {
			return nil
		}
		if err := s.db.Update(&tx); err != nil {
			return fmt.Errorf("write import batch: %w", err)
		}
		for _, p := range batch {
			ok := p.devOp.Cmd != database.CmpAndSwap || p.devOp.Swapped
			for _, c := range p.cas {
				ok = ok && c.Swapped
			}
			if ok {
				if p.deactivated != nil {
					notifyDeactivated(DeviceChange{Device: p.deactivated})
				}
				continue
			}
			// Lost a race with a concurrent writer: undo what this row did.
			if p.created {
				_ = s.db.Del(DevicesTable, []byte(p.id))
			}
			for _, c := range p.cas {
				if c.Swapped {
					_ = s.db.Del(IdentifiersTable, c.Key)
				}
			}
			r := &rep.Rows[p.row]
			switch r.Status {
			case RowAccepted:
				rep.Accepted--
			case RowUpdated:
				rep.Updated--
			}
			r.Status, r.Reason, r.DeviceID = RowRejected, "changed concurrently by another writer; import again", ""
			rep.Rejected++
		}
		batch, tx = nil, database.Tx{}
		return nil
	}

	now := s.now().UTC()
	for i, row := range rows {
		res := &rep.Rows[i]
		res.Line = row.Line
		reject := func(format string, args ...any) {
			res.Status, res.Reason = RowRejected, fmt.Sprintf(format, args...)
			rep.Rejected++
		}
		if row.Err != nil {
			reject("%v", row.Err)
			continue
		}
		in := row.Input
		in.Source = source
		d, err := in.build()
		if err != nil {
			if len(in.Identifiers) > 0 {
				res.Identifier = in.Identifiers[0]
			}
			reject("%v", err)
			continue
		}
		res.Identifier = d.Identifiers[0]
		if d.Collection != "" && !collections[d.Collection] {
			reject("collection %q does not exist", d.Collection)
			continue
		}
		owner := ""
		conflict := false
		for _, pid := range d.Identifiers {
			if id, ok := index[pid]; ok {
				if owner != "" && owner != id {
					conflict = true
				}
				owner = id
			}
		}
		if conflict {
			reject("identifiers belong to different devices")
			continue
		}
		p := pending{row: i}
		if owner == "" {
			d.ID = newID()
			d.CreatedAt, d.UpdatedAt = now, now
			for _, pid := range d.Identifiers {
				index[pid] = d.ID
				e := &database.TxEntry{Bucket: IdentifiersTable, Key: []byte(pid), Value: []byte(d.ID), Cmd: database.CmpAndSwap}
				p.cas = append(p.cas, e)
				tx.Operations = append(tx.Operations, e)
			}
			b, _ := json.Marshal(d)
			p.devOp = &database.TxEntry{Bucket: DevicesTable, Key: []byte(d.ID), Value: b, Cmd: database.Set}
			tx.Operations = append(tx.Operations, p.devOp)
			p.created, p.id = true, d.ID
			res.Status, res.DeviceID = RowAccepted, d.ID
			rep.Accepted++
			devices[d.ID] = d
			stored[d.ID] = b
		} else {
			if err := loadDevices(); err != nil {
				return nil, err
			}
			cur, ok := devices[owner]
			if !ok {
				reject("identifier index points at missing device %s", owner)
				continue
			}
			if in.Status == "" {
				d.Status = "" // absent from the row: keep the stored status
			}
			merged, err := merge(cur, d)
			if err != nil {
				reject("%v", err)
				continue
			}
			res.DeviceID = cur.ID
			if sameDevice(cur, merged) {
				res.Status = RowUnchanged
				rep.Unchanged++
				continue
			}
			merged.UpdatedAt = now
			for _, pid := range merged.Identifiers {
				if _, held := index[pid]; !held {
					index[pid] = merged.ID
					e := &database.TxEntry{Bucket: IdentifiersTable, Key: []byte(pid), Value: []byte(merged.ID), Cmd: database.CmpAndSwap}
					p.cas = append(p.cas, e)
					tx.Operations = append(tx.Operations, e)
				}
			}
			b, _ := json.Marshal(merged)
			p.devOp = &database.TxEntry{Bucket: DevicesTable, Key: []byte(merged.ID), CmpValue: stored[merged.ID], Value: b, Cmd: database.CmpAndSwap}
			tx.Operations = append(tx.Operations, p.devOp)
			p.id = merged.ID
			if cur.Active() && !merged.Active() {
				p.deactivated = merged
			}
			devices[merged.ID] = merged
			stored[merged.ID] = b
			res.Status = RowUpdated
			rep.Updated++
		}
		batch = append(batch, p)
		if len(batch) >= importBatch {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return rep, nil
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
