package legacy

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Limits of the importer.
const (
	// DefaultBatchSize is how many rows one write transaction holds.
	DefaultBatchSize = 10000
	// MaxCRLFileSize bounds a CRL file (a million entries is about 40 MB).
	MaxCRLFileSize = 256 << 20
)

// ADCS request dispositions the importer imports.
const (
	DispositionIssued  = 20
	DispositionRevoked = 21
)

// ImportOptions configure an import.
type ImportOptions struct {
	// Issuer is the legacy issuer's name; IssuerCert its certificate, which
	// must have signed every CRL and every certificate the export carries.
	Issuer     string
	IssuerCert *x509.Certificate
	// Reader says how the exports were made (columns, date format, zone).
	Reader adcs.Options
	// DryRun computes and reports the changes without writing.
	DryRun bool
	// AllowPartial imports the valid rows although some were refused.
	AllowPartial bool
	// Verbose reports every imported row, not only refused and skipped ones.
	Verbose bool
	// BatchSize is the rows per write transaction (DefaultBatchSize).
	BatchSize int
	// Log receives the per-row report, one line per row, as it is made
	// (nil: discarded).
	Log io.Writer
	// Now is the import's time (LastImport); time.Now when zero.
	Now time.Time
	// Audit, when set, receives one legacy.import record of the import's
	// outcome (docs/audit.md); nil: none.
	Audit plugins.Auditor
	// Actor is who ran the import, for the record (default: system
	// "stepfort migrate adcs import").
	Actor plugins.AuditActor
}

// Report is the summary of an import. The rows of the exports add up:
// Rows = Imported + Skipped + Refused, and Imported = New + Changed +
// Unchanged - CRLOnly.
type Report struct {
	Files, CRLs int
	Rows        int
	Imported    int
	Skipped     int
	// SkippedBy counts skipped rows by disposition.
	SkippedBy map[int]int
	Refused   int
	// New, Changed and Unchanged count the certificates written or left
	// (CRL-only serials included).
	New, Changed, Unchanged int
	// CRLOnly counts serials revoked on an imported CRL but missing from the
	// exports: imported as revoked serials.
	CRLOnly int
	// RevocationsAdded and RevocationsChanged count revocations that are
	// new, or whose time or reason changed.
	RevocationsAdded, RevocationsChanged int
	// KeptRevoked counts rows whose stored revocation was kept although the
	// export says otherwise (an import never lifts a revocation, except a
	// certificateHold released on the old CA).
	KeptRevoked int
	// CRLNumberFloor before and after the import.
	OldCRLNumberFloor, CRLNumberFloor int64
	// Written is false for a dry run or when nothing was written.
	Written bool
	// Version is the issuer's State.Version after the import.
	Version int64
}

// ErrRefused is returned (wrapped) when rows were refused and AllowPartial
// is off: nothing was written.
var ErrRefused = errors.New("refused")

// crlEntry is what the imported CRLs say about one serial.
type crlEntry struct {
	at     time.Time
	reason int
	seen   bool // the exports have a row for it
}

// importer holds one import's state.
type importer struct {
	s         *Store
	o         ImportOptions
	exports   []string
	crl       map[string]*crlEntry
	refused   map[string]map[int]bool // file -> lines
	rep       Report
	state     State
	batch     []pending
	stateDiff State // counts to add to the state
}

// pending is one certificate to merge with what is stored.
type pending struct {
	key  []byte
	rec  certRecord
	file string
	line int // 0 for a CRL-only serial
}

// Import reads the certutil exports and CRLs in files (a CRL is told by
// its .crl extension or its content) and imports the issued and revoked
// certificates of o.Issuer. Every row is validated first; when any is
// refused nothing is written unless o.AllowPartial. A CRL that the issuer
// did not sign fails the import before anything is written.
func (s *Store) Import(files []string, o ImportOptions) (rep *Report, err error) {
	defer func() { auditImport(o, files, rep, err) }()
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Now.IsZero() {
		o.Now = s.Now()
	}
	if err := ValidateName(o.Issuer); err != nil {
		return nil, fmt.Errorf("issuer name: %w", err)
	}
	if o.IssuerCert == nil {
		return nil, errors.New("import: the issuer's certificate is required")
	}
	im := &importer{s: s, o: o, crl: map[string]*crlEntry{}, refused: map[string]map[int]bool{}}
	im.rep.SkippedBy = map[int]int{}
	st, err := s.State(o.Issuer)
	if err != nil {
		return nil, err
	}
	im.state = st
	im.rep.OldCRLNumberFloor, im.rep.CRLNumberFloor = st.CRLNumberFloor, st.CRLNumberFloor
	if err := im.readCRLs(files); err != nil {
		return &im.rep, err
	}
	for _, f := range im.exports {
		if err := im.forEachRow(f, im.validate); err != nil {
			return &im.rep, err
		}
	}
	if im.rep.Refused > 0 && !o.AllowPartial {
		return &im.rep, fmt.Errorf("%d of %d rows were %w; nothing was imported (fix them, or import the others with --allow-partial)", im.rep.Refused, im.rep.Rows, ErrRefused)
	}
	if err := im.write(); err != nil {
		return &im.rep, err
	}
	return &im.rep, nil
}

// readCRLs sorts files into CRLs and exports and reads every CRL: newest
// number last, so a delta overrides its base.
func (im *importer) readCRLs(files []string) error {
	var crls []*adcs.CRLFile
	for _, f := range files {
		isCRL, err := isCRLFile(f)
		if err != nil {
			return err
		}
		if !isCRL {
			im.exports = append(im.exports, f)
			continue
		}
		c, err := readCRLFile(f, im.o.IssuerCert)
		if err != nil {
			return err
		}
		crls = append(crls, c)
		if c.Number != nil {
			if !c.Number.IsInt64() {
				return fmt.Errorf("%s: CRL number %s does not fit 63 bits", f, c.Number)
			}
			im.rep.CRLNumberFloor = max(im.rep.CRLNumberFloor, c.Number.Int64())
		}
		if c.Delta && c.BaseNumber != nil && c.BaseNumber.IsInt64() {
			im.rep.CRLNumberFloor = max(im.rep.CRLNumberFloor, c.BaseNumber.Int64())
		}
	}
	im.rep.Files, im.rep.CRLs = len(im.exports), len(crls)
	im.crl = mergeCRLs(crls)
	return nil
}

func number(c *adcs.CRLFile) *big.Int {
	if c.Number == nil {
		return new(big.Int)
	}
	return c.Number
}

// isCRLFile tells a CRL (.crl, PEM "X509 CRL", or DER: a SEQUENCE) from a
// certutil export (text that starts with a BOM, a header or a label).
func isCRLFile(path string) (bool, error) {
	if strings.EqualFold(filepath.Ext(path), ".crl") {
		return true, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	head := make([]byte, 64)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	head = bytes.TrimLeft(head[:n], " \t\r\n")
	return bytes.HasPrefix(head, []byte("-----BEGIN X509 CRL")) || len(head) > 0 && head[0] == 0x30, nil
}

func readCRLFile(path string, issuer *x509.Certificate) (*adcs.CRLFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxCRLFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxCRLFileSize {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, MaxCRLFileSize>>20)
	}
	c, err := adcs.ReadCRL(data, issuer)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (is it a CRL of %s?); nothing was imported", path, err, issuer.Subject)
	}
	return c, nil
}

// forEachRow reads one export and calls fn for every row or row error.
func (im *importer) forEachRow(path string, fn func(path string, row *adcs.Row, rowErr *adcs.RowError)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := adcs.NewReader(f, im.o.Reader)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for {
		row, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		var re *adcs.RowError
		switch {
		case errors.As(err, &re):
			fn(path, nil, re)
		case err != nil:
			return fmt.Errorf("%s: %w", path, err)
		default:
			fn(path, row, nil)
		}
	}
}

// validate is the first pass: it counts and reports every row that is
// refused or skipped, and notes which CRL serials the exports have.
func (im *importer) validate(path string, row *adcs.Row, rowErr *adcs.RowError) {
	im.rep.Rows++
	if rowErr == nil {
		rowErr = im.check(row)
	}
	if rowErr != nil {
		im.rep.Refused++
		if im.refused[path] == nil {
			im.refused[path] = map[int]bool{}
		}
		im.refused[path][rowErr.Line] = true
		fmt.Fprintf(im.o.Log, "%s: %s (refused)\n", path, rowErr)
		return
	}
	if row.Disposition != DispositionIssued && row.Disposition != DispositionRevoked {
		im.rep.Skipped++
		im.rep.SkippedBy[row.Disposition]++
		serial := "none"
		if row.Serial != nil {
			serial = fmt.Sprintf("%X", row.Serial)
		}
		fmt.Fprintf(im.o.Log, "%s: line %d: skipped: disposition %d (%s), serial %s\n", path, row.Line, row.Disposition, dispositionName(row.Disposition), serial)
		return
	}
	im.rep.Imported++
	if e := im.crl[row.Serial.String()]; e != nil {
		e.seen = true
	}
}

// check refuses a row the importer cannot import faithfully; nil when
// the row is fine (or merely skipped).
func (im *importer) check(row *adcs.Row) *adcs.RowError {
	bad := func(field, format string, a ...any) *adcs.RowError {
		return &adcs.RowError{Line: row.Line, Field: field, Err: fmt.Errorf(format, a...)}
	}
	if row.Disposition != DispositionIssued && row.Disposition != DispositionRevoked {
		return nil
	}
	if row.Serial == nil || row.Serial.Sign() <= 0 {
		return bad("SerialNumber", "missing or not positive")
	}
	if len(row.Serial.Bytes()) > 20 {
		return bad("SerialNumber", "%X is longer than 20 octets", row.Serial)
	}
	if !row.NotBefore.IsZero() && !row.NotAfter.IsZero() && row.NotAfter.Before(row.NotBefore) {
		return bad("NotAfter", "%s is before NotBefore %s", row.NotAfter.Format(time.RFC3339), row.NotBefore.Format(time.RFC3339))
	}
	if row.Disposition == DispositionRevoked {
		if e := im.crl[row.Serial.String()]; e == nil {
			// Without a CRL entry the export's values are all we have.
			if row.RevokedAt.IsZero() {
				return bad("Request.RevokedEffectiveWhen", "empty for a revoked row (and no imported CRL lists serial %X)", row.Serial)
			}
			if row.Reason < 0 {
				return bad("Request.RevokedReason", "empty for a revoked row (and no imported CRL lists serial %X)", row.Serial)
			}
		}
		if row.Reason >= 0 && !ValidReason(row.Reason) {
			return bad("Request.RevokedReason", "%d is not a revocation reason", row.Reason)
		}
	}
	if len(row.Certificate) > 0 {
		return im.checkCertificate(row)
	}
	return nil
}

func (im *importer) checkCertificate(row *adcs.Row) *adcs.RowError {
	bad := func(format string, a ...any) *adcs.RowError {
		return &adcs.RowError{Line: row.Line, Field: "RawCertificate", Err: fmt.Errorf(format, a...)}
	}
	cert, err := x509.ParseCertificate(row.Certificate)
	if err != nil {
		return bad("%v", err)
	}
	if err := cert.CheckSignatureFrom(im.o.IssuerCert); err != nil {
		// CheckSignatureFrom also insists on a CA parent; say what matters.
		if err := im.o.IssuerCert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
			return bad("not issued by %s: %v", im.o.IssuerCert.Subject, err)
		}
	}
	if cert.SerialNumber.Cmp(row.Serial) != 0 {
		return bad("serial %X differs from SerialNumber %X", cert.SerialNumber, row.Serial)
	}
	return nil
}

func dispositionName(d int) string {
	switch d {
	case 9:
		return "pending"
	case 15:
		return "CA certificate"
	case 16:
		return "CA certificate chain"
	case 30:
		return "failed"
	case 31:
		return "denied"
	}
	return "not issued or revoked"
}

// write is the second pass: it merges every valid row (and the CRL-only
// serials) with what is stored, and writes the changes in batches.
func (im *importer) write() error {
	var werr error
	for _, f := range im.exports {
		err := im.forEachRow(f, func(path string, row *adcs.Row, rowErr *adcs.RowError) {
			if werr != nil || rowErr != nil || im.refused[path][row.Line] {
				return
			}
			if row.Disposition != DispositionIssued && row.Disposition != DispositionRevoked {
				return
			}
			werr = im.add(pending{key: rowKey(im.o.Issuer, row.Serial), rec: im.record(row), file: path, line: row.Line})
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			return err
		}
	}
	if err := im.addCRLOnly(); err != nil {
		return err
	}
	if err := im.flush(); err != nil {
		return err
	}
	return im.finish()
}

// record is the row as it will be stored, with the CRL's exact revocation
// time and reason when a CRL lists it (the export's dates are to the
// minute).
func (im *importer) record(row *adcs.Row) certRecord {
	rec := certRecord{RequestID: row.RequestID, Name: row.CommonName, Template: row.Template, Source: sourceExport}
	nb, na := row.NotBefore, row.NotAfter
	if (nb.IsZero() || na.IsZero()) && len(row.Certificate) > 0 {
		if c, err := x509.ParseCertificate(row.Certificate); err == nil {
			nb, na = c.NotBefore, c.NotAfter
		}
	}
	if !nb.IsZero() {
		rec.NotBefore = nb.Unix()
	}
	if !na.IsZero() {
		rec.NotAfter = na.Unix()
	}
	if e := im.crl[row.Serial.String()]; e != nil {
		rec.Revoked, rec.RevokedAt, rec.Reason = true, e.at.UnixNano(), e.reason
	} else if row.Disposition == DispositionRevoked {
		rec.Revoked, rec.RevokedAt, rec.Reason = true, row.RevokedAt.UTC().UnixNano(), row.Reason
	}
	return rec
}

// addCRLOnly queues the serials a CRL lists but no export row has.
func (im *importer) addCRLOnly() error {
	var serials []string
	for k, e := range im.crl {
		if !e.seen {
			serials = append(serials, k)
		}
	}
	slices.Sort(serials)
	for _, k := range serials {
		e := im.crl[k]
		serial, _ := new(big.Int).SetString(k, 10)
		im.rep.CRLOnly++
		rec := certRecord{Revoked: true, RevokedAt: e.at.UnixNano(), Reason: e.reason, Source: sourceCRL}
		if err := im.add(pending{key: rowKey(im.o.Issuer, serial), rec: rec}); err != nil {
			return err
		}
	}
	return nil
}

func (im *importer) add(p pending) error {
	im.batch = append(im.batch, p)
	if len(im.batch) >= im.o.BatchSize {
		return im.flush()
	}
	return nil
}

// flush merges the batch with the stored rows and writes what changed in
// one transaction.
func (im *importer) flush() error {
	if len(im.batch) == 0 {
		return nil
	}
	defer func() { im.batch = im.batch[:0] }()
	keys := make([][]byte, len(im.batch))
	for i, p := range im.batch {
		keys[i] = p.key
	}
	olds := make([][]byte, len(keys))
	if !im.fresh() {
		var err error
		if olds, err = storage.GetMany(im.s.db, CertsTable, keys); err != nil {
			return fmt.Errorf("legacy issuer %s: %w", im.o.Issuer, err)
		}
	}
	var writes []storage.Write
	stored := map[string][]byte{} // a serial twice in one batch: merge with the first
	for i, p := range im.batch {
		old := olds[i]
		if b, ok := stored[string(p.key)]; ok {
			old = b
		}
		w, b, err := im.merge(p, old)
		if err != nil {
			return err
		}
		if b != nil {
			stored[string(p.key)] = b
		}
		writes = append(writes, w...)
	}
	if im.o.DryRun || len(writes) == 0 {
		return nil
	}
	sort.SliceStable(writes, func(i, j int) bool { // bbolt writes sorted keys fastest
		if c := bytes.Compare(writes[i].Table, writes[j].Table); c != 0 {
			return c < 0
		}
		return bytes.Compare(writes[i].Key, writes[j].Key) < 0
	})
	if err := storage.WriteBatch(im.s.db, writes); err != nil {
		return fmt.Errorf("legacy issuer %s: %w", im.o.Issuer, err)
	}
	im.rep.Written = true
	return nil
}

// fresh reports an issuer with nothing stored (never imported, nothing
// revoked through stepfort), whose rows need not be read to be merged. A
// crashed first import may have left rows behind; they are overwritten
// with the same data, only the report's counts call them new.
func (im *importer) fresh() bool {
	return im.state.Version == 0 && im.state.Certificates == 0 && im.state.Revoked == 0
}

// merge decides one certificate: the writes (none when unchanged) and the
// new stored bytes (nil when unchanged).
func (im *importer) merge(p pending, oldBytes []byte) ([]storage.Write, []byte, error) {
	var old *certRecord
	if oldBytes != nil {
		old = new(certRecord)
		if err := json.Unmarshal(oldBytes, old); err != nil {
			return nil, nil, fmt.Errorf("legacy issuer %s: decode stored %s: %w", im.o.Issuer, p.key, err)
		}
	}
	next, kept := mergeRecord(old, p.rec)
	where := im.where(p)
	if kept {
		im.rep.KeptRevoked++
		fmt.Fprintf(im.o.Log, "%s: kept the stored revocation (reason %d at %s): the import says %s\n",
			where, old.Reason, old.revokedAt().Format(time.RFC3339), describe(&p.rec))
	}
	b, err := json.Marshal(next)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case old == nil:
		im.rep.New++
		im.stateDiff.Certificates++
	case bytes.Equal(b, oldBytes):
		im.rep.Unchanged++
		if im.o.Verbose {
			fmt.Fprintf(im.o.Log, "%s: unchanged: %s\n", where, describe(next))
		}
		return nil, nil, nil
	default:
		im.rep.Changed++
	}
	wasRevoked := old != nil && old.Revoked
	switch {
	case next.Revoked && !wasRevoked:
		im.rep.RevocationsAdded++
		im.stateDiff.Revoked++
	case next.Revoked && (old.RevokedAt != next.RevokedAt || old.Reason != next.Reason):
		im.rep.RevocationsChanged++
	case !next.Revoked && wasRevoked:
		im.stateDiff.Revoked--
	}
	if im.o.Verbose {
		verb := "changed"
		if old == nil {
			verb = "new"
		}
		fmt.Fprintf(im.o.Log, "%s: %s: %s\n", where, verb, describe(next))
	}
	w := []storage.Write{{Table: CertsTable, Key: p.key, Value: b}}
	if next.Revoked {
		w = append(w, storage.Write{Table: RevokedTable, Key: p.key, Value: revokedValue(next)})
	} else if wasRevoked {
		w = append(w, storage.Write{Table: RevokedTable, Key: p.key, Delete: true})
	}
	return w, b, nil
}

func (im *importer) where(p pending) string {
	serial := string(p.key[len(im.o.Issuer)+1:])
	if n, ok := new(big.Int).SetString(serial, 10); ok {
		serial = fmt.Sprintf("%X", n)
	}
	if p.line == 0 {
		return "CRL: serial " + serial
	}
	return fmt.Sprintf("%s: line %d: serial %s", p.file, p.line, serial)
}

func describe(r *certRecord) string {
	if !r.Revoked {
		return "issued"
	}
	return fmt.Sprintf("revoked at %s, reason %d", r.revokedAt().Format(time.RFC3339Nano), r.Reason)
}

// mergeRecord combines a stored record with an imported one. The import
// wins, except that it never lifts a revocation: a stepfort revocation
// stays as it is, and an old-CA revocation stays unless it was a hold the
// old CA released (the export says issued). kept reports a revocation
// kept against the import.
func mergeRecord(old *certRecord, in certRecord) (next *certRecord, kept bool) {
	if old == nil {
		return &in, false
	}
	n := *old
	if in.Source != sourceCRL { // a CRL-only entry knows nothing else
		n.RequestID, n.NotBefore, n.NotAfter, n.Name, n.Template = in.RequestID, in.NotBefore, in.NotAfter, in.Name, in.Template
		if n.Source != sourceStepfort {
			n.Source = sourceExport
		}
	}
	switch {
	case old.Source == sourceStepfort && old.Revoked:
		kept = !in.Revoked || in.RevokedAt != old.RevokedAt || in.Reason != old.Reason
	case in.Revoked:
		n.Revoked, n.RevokedAt, n.Reason = true, in.RevokedAt, in.Reason
	case old.Revoked && old.Reason == ReasonCertificateHold:
		n.Revoked, n.RevokedAt, n.Reason = false, 0, 0
	case old.Revoked:
		kept = true
	}
	return &n, kept
}

// finish records the new state: Version bumped when rows changed, the
// CRL number floor raised.
func (im *importer) finish() error {
	changed := im.rep.New+im.rep.Changed > 0
	floor := im.rep.CRLNumberFloor > im.state.CRLNumberFloor
	im.rep.Version = im.state.Version
	if changed {
		im.rep.Version++
	}
	if im.o.DryRun || !changed && !floor {
		return nil
	}
	var final State
	err := im.s.modifyState(im.o.Issuer, func(st *State) bool {
		if changed {
			st.Version++
			st.Changes++
			st.Certificates += im.stateDiff.Certificates
			st.Revoked += im.stateDiff.Revoked
			st.LastImport = im.o.Now.UTC()
		}
		st.CRLNumberFloor = max(st.CRLNumberFloor, im.rep.CRLNumberFloor)
		final = *st
		return true
	})
	if err != nil {
		return err
	}
	im.rep.Version, im.rep.Written = final.Version, true
	return nil
}
