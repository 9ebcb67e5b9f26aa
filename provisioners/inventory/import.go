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

	"github.com/stepfort/stepfort/internal/storage"
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
	Total          int      `json:"total"`
	Accepted       int      `json:"accepted"`
	Updated        int      `json:"updated"`
	Unchanged      int      `json:"unchanged"`
	Rejected       int      `json:"rejected"`
	IgnoredColumns []string `json:"ignoredColumns,omitempty"`
	// Error is set when a database error ended the import part-way; the
	// rows it did not store are rejected with a reason saying so.
	Error string      `json:"error,omitempty"`
	Rows  []RowResult `json:"rows"`
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

// Bounds on what the import parsers hold in memory at once, so a hostile
// or broken file cannot make one row (or one field) as large as the body.
const (
	// MaxImportFieldBytes bounds one CSV cell or JSON string of a mapped
	// field: an EK certificate as PEM or base64 (at most 4 KiB of DER)
	// fits with room to spare.
	MaxImportFieldBytes = 16 << 10
	// MaxImportRowBytes bounds one CSV record or JSON array element,
	// unmapped columns included. A longer row ends the import with an
	// error naming its line: the parser cannot find where the next one
	// starts without reading it all.
	MaxImportRowBytes = 256 << 10
)

// rowSlack is how far the parsers' buffers may read ahead of the row they
// parse (bufio's 4 KiB for CSV; encoding/json's buffer grows to about
// twice the largest value it has held).
const rowSlack = 4 << 10

// errRowTooLarge is returned by rowLimiter once a row used its budget.
var errRowTooLarge = errors.New("row too large")

// rowLimiter lets a parser read at most one row's budget from r between
// two calls of next.
type rowLimiter struct {
	r    io.Reader
	left int
}

func newRowLimiter(r io.Reader) *rowLimiter {
	l := &rowLimiter{r: r}
	l.next()
	return l
}

// next starts the budget of the next row.
func (l *rowLimiter) next() { l.left = MaxImportRowBytes + rowSlack }

func (l *rowLimiter) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errRowTooLarge
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}

// rowTooLarge is the error of an import that met an oversized row.
func rowTooLarge(line int) error {
	return fmt.Errorf("line %d: row longer than %d bytes", line, MaxImportRowBytes)
}

// csvColumn maps a CSV column to a device field.
type csvColumn struct {
	idx    int
	field  string
	header string
}

// ParseCSV reads a CSV with a header row. Without a mapping, headers named
// like fields (case-insensitive) are used and others ignored; with one,
// only mapped columns are used. maxRows bounds the rows read. A record
// longer than MaxImportRowBytes ends the parse with an error naming its
// line; a mapped cell longer than MaxImportFieldBytes rejects its row.
func ParseCSV(r io.Reader, m Mapping, maxRows int) ([]ImportRow, []string, error) {
	lim := newRowLimiter(r)
	cr := csv.NewReader(lim)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if errors.Is(err, errRowTooLarge) {
		return nil, nil, rowTooLarge(1)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read CSV header: %w", err)
	}
	header = append([]string(nil), header...) // ReuseRecord: the next Read reuses it
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\ufeff") // Excel BOM
	}
	cols, ignored, err := csvColumns(header, m)
	if err != nil {
		return nil, ignored, err
	}
	var rows []ImportRow
	for line := 2; ; line++ {
		lim.next()
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if len(rows) >= maxRows {
			return nil, ignored, fmt.Errorf("more than %d rows", maxRows)
		}
		if errors.Is(err, errRowTooLarge) {
			return nil, ignored, rowTooLarge(line)
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) && pe.Err != csv.ErrFieldCount {
				rows = append(rows, ImportRow{Line: line, Err: fmt.Errorf("CSV: %v", pe.Err)})
				continue
			}
			return nil, ignored, fmt.Errorf("read CSV line %d: %w", line, err)
		}
		rows = append(rows, csvRow(line, rec, cols))
	}
	return rows, ignored, nil
}

// csvColumns picks the columns of header that map to device fields and
// lists the others.
func csvColumns(header []string, m Mapping) ([]csvColumn, []string, error) {
	var cols []csvColumn
	var ignored []string
	used := map[int]bool{}
	if m == nil {
		for i, h := range header {
			if f, ok := canonicalField(strings.TrimSpace(h)); ok {
				cols = append(cols, csvColumn{i, f, h})
				used[i] = true
			}
		}
	} else {
		for _, p := range m {
			found := false
			for i, h := range header {
				if strings.EqualFold(strings.TrimSpace(h), p.Column) {
					cols = append(cols, csvColumn{i, p.Field, h})
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
	return cols, ignored, nil
}

// csvRow maps one record to a row, rejected if a mapped cell is too long.
func csvRow(line int, rec []string, cols []csvColumn) ImportRow {
	var in DeviceInput
	for _, c := range cols {
		if c.idx >= len(rec) {
			continue
		}
		if n := len(rec[c.idx]); n > MaxImportFieldBytes {
			return ImportRow{Line: line, Err: fmt.Errorf("column %q: %d bytes, at most %d", c.header, n, MaxImportFieldBytes)}
		}
		setField(&in, c.field, strings.TrimSpace(rec[c.idx]))
	}
	return ImportRow{Line: line, Input: in}
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

// ParseJSONRows reads a JSON array of DeviceInput (or {"devices": [...]}),
// one element at a time. An element longer than MaxImportRowBytes ends the
// parse with an error naming it; a string field longer than
// MaxImportFieldBytes rejects its row.
func ParseJSONRows(r io.Reader, maxRows int) ([]ImportRow, error) {
	lim := newRowLimiter(r)
	p := &jsonRows{dec: json.NewDecoder(lim), lim: lim, maxRows: maxRows}
	tok, err := p.token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('['):
		err = p.array()
	case json.Delim('{'):
		err = p.wrapped()
	default:
		err = errors.New(`JSON: expected an array of devices or {"devices": [...]}`)
	}
	if err != nil {
		return nil, err
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, errors.New("JSON: data after the end of the document")
	}
	return p.rows, nil
}

// jsonRows is the state of ParseJSONRows.
type jsonRows struct {
	dec     *json.Decoder
	lim     *rowLimiter
	maxRows int
	rows    []ImportRow
}

// token reads the next token, naming a row that is too large.
func (p *jsonRows) token() (json.Token, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return nil, p.fail(err)
	}
	return tok, nil
}

func (p *jsonRows) fail(err error) error {
	if errors.Is(err, errRowTooLarge) {
		return rowTooLarge(len(p.rows) + 1)
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("JSON: %w", err)
}

// wrapped reads the members of {"devices": [...]}; other members are
// skipped, as json.Unmarshal into a struct would.
func (p *jsonRows) wrapped() error {
	seen := false
	for p.dec.More() {
		tok, err := p.token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if !strings.EqualFold(key, "devices") {
			p.lim.next()
			var skip json.RawMessage
			if err := p.dec.Decode(&skip); err != nil {
				return p.fail(err)
			}
			continue
		}
		if seen {
			return errors.New(`JSON: "devices" given twice`)
		}
		seen = true
		if tok, err = p.token(); err != nil {
			return err
		}
		if tok == nil {
			continue // "devices": null
		}
		if tok != json.Delim('[') {
			return errors.New(`JSON: "devices" must be an array`)
		}
		if err := p.array(); err != nil {
			return err
		}
	}
	_, err := p.token() // '}'
	return err
}

// array reads the elements of an array whose '[' was read, and its ']'.
func (p *jsonRows) array() error {
	for p.dec.More() {
		if len(p.rows) >= p.maxRows {
			return fmt.Errorf("more than %d rows", p.maxRows)
		}
		p.lim.next()
		var raw json.RawMessage
		if err := p.dec.Decode(&raw); err != nil {
			return p.fail(err)
		}
		p.rows = append(p.rows, jsonRow(len(p.rows)+1, raw))
	}
	_, err := p.token() // ']'
	return err
}

// jsonRow decodes one element strictly into a row.
func jsonRow(line int, raw json.RawMessage) ImportRow {
	row := ImportRow{Line: line}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&row.Input); err != nil {
		row.Err = fmt.Errorf("JSON: %v", err)
		return row
	}
	if err := row.Input.checkSizes(); err != nil {
		row.Err = err
	}
	return row
}

// checkSizes bounds every string of an import row by
// MaxImportFieldBytes, naming the field.
func (in *DeviceInput) checkSizes() error {
	fields := map[string]string{"ekPublic": in.EKPublic, "ekCertificate": in.EKCert, "name": in.Name, "type": in.Type,
		"os": in.OS, "serial": in.Serial, "collection": in.Collection, "owner": in.Owner, "source": in.Source, "status": string(in.Status)}
	for i, id := range in.Identifiers {
		fields[fmt.Sprintf("identifiers[%d]", i)] = id
	}
	for k, v := range in.Metadata {
		fields["metadata."+truncate(k)] = k + v
	}
	for name, v := range fields {
		if len(v) > MaxImportFieldBytes {
			return fmt.Errorf("%s: %d bytes, at most %d", name, len(v), MaxImportFieldBytes)
		}
	}
	return nil
}

// importBatch is how many rows go into one database transaction.
const importBatch = 500

// Import upserts rows keyed by permanent identifier: a row whose
// identifiers (or EK) match a registered device updates it (fields given in
// the row replace stored ones), otherwise it creates a device. Importing the
// same file twice leaves the inventory unchanged the second time.
//
// Writes are batched in transactions; identifier claims are
// compare-and-swap operations inside them (storage.Update: atomic on
// PostgreSQL too), so a device created concurrently elsewhere with the same
// identifier makes the row rejected, never a duplicate. A row that
// disables an active device records a plugins.DeviceDisabled event in its
// batch's transaction (WithEvents).
//
// A database error part-way ends the import: the report is still returned,
// with the error, alongside it. Rows of the batches committed before stay
// as reported; every row that was not stored (the failed batch, the rows
// after it) is rejected with a reason saying so, and ImportReport.Error
// says where the import stopped. The report is nil only if the error came
// before any row was looked at.
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
	if i, err := im.run(rows, rep); err != nil {
		rep.stopped(rows, i, im.batch, err)
		return rep, err
	}
	s.analyzeAfterImport(rep)
	return rep, nil
}

// analyzeAfterImport refreshes the device table's statistics after a
// large import on PostgreSQL: until autovacuum does, a search would be
// planned on the table as it was (an empty table's, for a first import)
// and could sort every match instead of walking the ID order.
func (s *Store) analyzeAfterImport(rep *ImportReport) {
	if !s.indexed || rep.Accepted+rep.Updated < analyzeAfterRows {
		return
	}
	if err := storage.AnalyzeTable(s.db, DevicesTable); err != nil {
		s.log.Warn("inventory: refreshing the device table's statistics after an import", "err", err)
	}
}

// analyzeAfterRows is the import size that refreshes the statistics.
const analyzeAfterRows = 1000

// run plans and writes rows in batches. On error it returns the index of
// the first row not yet planned; the rows of im.batch were not stored.
func (im *importer) run(rows []ImportRow, rep *ImportReport) (int, error) {
	for i, row := range rows {
		res, w, err := im.plan(row)
		if err != nil {
			return i, err
		}
		rep.set(i, res)
		if w == nil {
			continue
		}
		w.row = i
		if err := im.add(w); err != nil {
			im.batch = append(im.batch, w) // not stored either
			return i + 1, err
		}
		if len(im.batch) >= importBatch {
			if err := im.flush(rep); err != nil {
				return i + 1, err
			}
		}
	}
	return len(rows), im.flush(rep)
}

// stopped records an import that ended with err: the rows of the batch
// that was not committed and every row from next on are rejected as not
// stored.
func (rep *ImportReport) stopped(rows []ImportRow, next int, batch []*rowWrite, err error) {
	line := 0
	if len(batch) > 0 {
		line = rows[batch[0].row].Line
	} else if next < len(rows) {
		line = rows[next].Line
	}
	rep.Error = fmt.Sprintf("import stopped at line %d: %v; no row from that line on was stored", line, err)
	reason := fmt.Sprintf("not stored: %v; import again", err)
	for _, w := range batch {
		rep.reject(w.row, reason)
	}
	for i := next; i < len(rows); i++ {
		rep.Rows[i] = RowResult{Line: rows[i].Line}
		rep.Rejected++
		rep.Rows[i].Status, rep.Rows[i].Reason = RowRejected, reason
	}
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
	rep.reject(i, "changed concurrently by another writer; import again")
}

// reject turns row i, accepted or updated when planned, into a rejected
// row whose write did not land.
func (rep *ImportReport) reject(i int, reason string) {
	r := &rep.Rows[i]
	switch r.Status {
	case RowAccepted:
		rep.Accepted--
	case RowUpdated:
		rep.Updated--
	case RowRejected:
		return
	}
	r.Status, r.Reason, r.DeviceID = RowRejected, reason, ""
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
	// storage.Update: a claim (compare-and-swap with an absent value) is
	// atomic on PostgreSQL too, where nosql's would let two replicas both
	// claim one identifier.
	if err := storage.Update(im.s.db, &im.tx); err != nil {
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
