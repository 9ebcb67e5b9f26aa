package legacy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/crlchanges"
	"github.com/stepfort/stepfort/internal/storage"
)

// The tables of imported certificates. Every key is rowKey(issuer, serial)
// (stateTable: the issuer name), so two issuers may share a serial.
var (
	// CertsTable holds every certificate known for a legacy issuer (JSON
	// certRecord), revoked or not: what OCSP answers from.
	CertsTable = []byte("stepfort_legacy_certs")
	// RevokedTable holds only the revoked ones (revokedValue), so that a
	// CRL scan does not read every certificate.
	RevokedTable = []byte("stepfort_legacy_revoked")
	// StateTable holds one JSON State per issuer.
	StateTable = []byte("stepfort_legacy_state")
)

// CRL reason codes used here (RFC 5280 5.3.1).
const (
	ReasonUnspecified     = 0
	ReasonCertificateHold = 6
	ReasonRemoveFromCRL   = crlchanges.RemoveFromCRL // 8: a release from hold
	ReasonAACompromise    = 10
)

// Errors of Revoke, for the admin API to map to status codes.
var (
	ErrUnknownSerial  = errors.New("no certificate with this serial was imported for the issuer")
	ErrAlreadyRevoked = errors.New("the certificate is already revoked")
	ErrNotOnHold      = errors.New("the certificate is not on hold (certificateHold): it cannot be released")
	ErrBadReason      = errors.New("not a CRL reason code (0-6, 8, 9, 10)")
)

// Record sources: where a certificate row came from.
const (
	sourceExport   = "export"   // a row of a certutil export
	sourceCRL      = "crl"      // only an entry of an imported CRL
	sourceStepfort = "stepfort" // revoked through stepfort after cut-over
)

// certRecord is the value of a CertsTable row. Times are Unix seconds
// (revokedAt: nanoseconds, as a CRL may carry them) to keep rows small.
type certRecord struct {
	RequestID int64  `json:"rid,omitempty"`
	NotBefore int64  `json:"nb,omitempty"`
	NotAfter  int64  `json:"na,omitempty"`
	Revoked   bool   `json:"rv,omitempty"`
	RevokedAt int64  `json:"ra,omitempty"`
	Reason    int    `json:"rr,omitempty"`
	Name      string `json:"cn,omitempty"`
	Template  string `json:"tpl,omitempty"`
	// Source is sourceExport, sourceCRL or sourceStepfort; a re-import
	// never overrides a stepfort revocation.
	Source string `json:"src,omitempty"`
}

func (r *certRecord) notAfter() time.Time {
	if r.NotAfter == 0 {
		return time.Time{}
	}
	return time.Unix(r.NotAfter, 0).UTC()
}

func (r *certRecord) revokedAt() time.Time { return time.Unix(0, r.RevokedAt).UTC() }

// rowKey is the one place keys are built: "<issuer>/<serial in decimal>".
func rowKey(issuer string, serial *big.Int) []byte {
	return serial.Append([]byte(issuer+"/"), 10)
}

// revokedValue encodes a RevokedTable row: "<revokedAt unix nanos>
// <reason> <notAfter unix seconds, 0 unknown>", cheap to parse in a scan
// of a million rows.
func revokedValue(r *certRecord) []byte {
	b := strconv.AppendInt(nil, r.RevokedAt, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(r.Reason), 10)
	b = append(b, ' ')
	return strconv.AppendInt(b, r.NotAfter, 10)
}

func parseRevokedValue(v []byte) (revokedAt time.Time, reason int, notAfter time.Time, err error) {
	f := bytes.Fields(v)
	if len(f) != 3 {
		return revokedAt, 0, notAfter, fmt.Errorf("malformed revocation %q", v)
	}
	ra, err1 := strconv.ParseInt(string(f[0]), 10, 64)
	rr, err2 := strconv.Atoi(string(f[1]))
	na, err3 := strconv.ParseInt(string(f[2]), 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return revokedAt, 0, notAfter, fmt.Errorf("malformed revocation %q: %w", v, err)
	}
	if na != 0 {
		notAfter = time.Unix(na, 0).UTC()
	}
	return time.Unix(0, ra).UTC(), rr, notAfter, nil
}

// Store holds the imported certificates of every legacy issuer.
type Store struct {
	db nosql.DB
	// Now is the clock of change records; time.Now unless a test sets it.
	Now func() time.Time
}

// OpenStore creates the tables (and crlchanges') if needed.
func OpenStore(db nosql.DB) (*Store, error) {
	for _, t := range [][]byte{CertsTable, RevokedTable, StateTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	if err := crlchanges.Init(db); err != nil {
		return nil, fmt.Errorf("create table %s: %w", crlchanges.Table, err)
	}
	return &Store{db: db, Now: time.Now}, nil
}

// DB is the store's database.
func (s *Store) DB() nosql.DB { return s.db }

// Status is what OCSP answers for one serial.
type Status struct {
	Code      int // ocsp.Good, ocsp.Revoked or ocsp.Unknown
	RevokedAt time.Time
	Reason    int
	// NotAfter is the certificate's expiry; zero when only a CRL named it.
	NotAfter time.Time
}

// Status looks serial up: Good when imported and not revoked, Revoked
// with time and reason, Unknown when the issuer never had it imported.
func (s *Store) Status(issuer string, serial *big.Int) (Status, error) {
	rec, _, err := s.get(issuer, serial)
	if err != nil {
		return Status{}, err
	}
	if rec == nil {
		return Status{Code: ocsp.Unknown}, nil
	}
	st := Status{Code: ocsp.Good, NotAfter: rec.notAfter()}
	if rec.Revoked {
		st.Code, st.RevokedAt, st.Reason = ocsp.Revoked, rec.revokedAt(), rec.Reason
	}
	return st, nil
}

// get returns the record and its stored bytes, or nil when absent.
func (s *Store) get(issuer string, serial *big.Int) (*certRecord, []byte, error) {
	b, err := s.db.Get(CertsTable, rowKey(issuer, serial))
	switch {
	case database.IsErrNotFound(err):
		return nil, nil, nil
	case err != nil:
		return nil, nil, fmt.Errorf("legacy issuer %s: look up serial %s: %w", issuer, serial, err)
	}
	var rec certRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, nil, fmt.Errorf("legacy issuer %s: decode serial %s: %w", issuer, serial, err)
	}
	return &rec, b, nil
}

// ForEachRevoked streams the issuer's revoked certificates (serial in
// decimal; notAfter zero when unknown). serialDec is only valid during the
// call. On bbolt fn runs in a read transaction and must not write.
func (s *Store) ForEachRevoked(issuer string, fn func(serialDec []byte, revokedAt time.Time, reason int, notAfter time.Time) error) error {
	prefix := []byte(issuer + "/")
	return storage.ForEach(s.db, RevokedTable, func(key, value []byte) error {
		if !bytes.HasPrefix(key, prefix) {
			return nil
		}
		at, reason, notAfter, err := parseRevokedValue(value)
		if err != nil {
			return fmt.Errorf("legacy issuer %s: serial %s: %w", issuer, key[len(prefix):], err)
		}
		return fn(key[len(prefix):], at, reason, notAfter)
	})
}

// State is an issuer's import state.
type State struct {
	// Version is bumped by every import that changed rows: the CRL
	// publisher then publishes a new base CRL. Revoke does not bump it
	// (its change goes to the next delta CRL).
	Version int64 `json:"version"`
	// CRLNumberFloor is the highest CRL number (base or delta) the old CA
	// published, as far as the imported CRLs tell: the next CRL of the
	// series is numbered above it.
	CRLNumberFloor int64 `json:"crlNumberFloor"`
	// Certificates and Revoked count the issuer's rows.
	Certificates int64 `json:"certificates"`
	Revoked      int64 `json:"revoked"`
	// Changes is bumped by every change of a certificate's status (an
	// import that changed rows, every Revoke): the OCSP responder re-reads
	// cached statuses of an issuer only when it moved, so a cached answer
	// costs one read of this row per issuer and second, not one per
	// serial.
	Changes int64 `json:"changes"`
	// LastImport is when an import last changed something.
	LastImport time.Time `json:"lastImport,omitzero"`
}

// State returns the issuer's state (the zero State before any import).
func (s *Store) State(issuer string) (State, error) {
	st, _, err := storage.GetJSON[State](s.db, StateTable, []byte(issuer))
	if err != nil {
		return State{}, fmt.Errorf("legacy issuer %s: %w", issuer, err)
	}
	return *st, nil
}

func (s *Store) modifyState(issuer string, fn func(*State) bool) error {
	_, err := storage.ModifyJSON(s.db, StateTable, []byte(issuer), fn)
	if err != nil {
		return fmt.Errorf("legacy issuer %s: update state: %w", issuer, err)
	}
	return nil
}

// RevokeOption changes what Revoke accepts.
type RevokeOption func(*revokeOptions)

type revokeOptions struct{ allowUnknown bool }

// AllowUnknown lets Revoke revoke a serial that was never imported (a
// certificate the export missed); it is then known only as revoked.
func AllowUnknown() RevokeOption { return func(o *revokeOptions) { o.allowUnknown = true } }

// maxRevokeAttempts bounds Revoke's compare-and-swap retries.
const maxRevokeAttempts = 10

// ValidReason reports whether reason is a CRLReason a revocation may
// carry (7 is unused; 8 removeFromCRL only releases a hold).
func ValidReason(reason int) bool {
	return reason >= 0 && reason <= ReasonAACompromise && reason != 7
}

// Revoke revokes serial of issuer at time at with reason, for a revocation
// made through stepfort after cut-over. It updates the rows, then records
// a crlchanges entry for the issuer's series, so the next delta CRL lists
// it; Version is not bumped. Reason ReasonRemoveFromCRL releases a
// certificate on hold. An unknown serial is refused unless AllowUnknown;
// an already revoked one is refused, except a hold changed to another
// reason.
func (s *Store) Revoke(issuer string, serial *big.Int, reason int, at time.Time, opts ...RevokeOption) error {
	var o revokeOptions
	for _, f := range opts {
		f(&o)
	}
	if !ValidReason(reason) {
		return fmt.Errorf("reason %d: %w", reason, ErrBadReason)
	}
	if serial == nil || serial.Sign() <= 0 {
		return errors.New("serial must be a positive number")
	}
	for range maxRevokeAttempts {
		rec, old, err := s.get(issuer, serial)
		if err != nil {
			return err
		}
		next, wasRevoked, err := revoked(rec, reason, at, o)
		if err != nil {
			return fmt.Errorf("legacy issuer %s: serial %X: %w", issuer, serial, err)
		}
		b, err := json.Marshal(next)
		if err != nil {
			return err
		}
		key := rowKey(issuer, serial)
		_, swapped, err := storage.CmpAndSwap(s.db, CertsTable, key, old, b)
		if err != nil {
			return fmt.Errorf("legacy issuer %s: revoke serial %X: %w", issuer, serial, err)
		}
		if !swapped {
			continue // changed under us: decide again on the new row
		}
		return s.afterRevoke(issuer, serial, next, rec == nil, wasRevoked)
	}
	return fmt.Errorf("legacy issuer %s: revoke serial %X: %w", issuer, serial, storage.ErrContended)
}

// revoked computes the record after the revocation (or release).
func revoked(rec *certRecord, reason int, at time.Time, o revokeOptions) (next *certRecord, wasRevoked bool, err error) {
	if rec == nil {
		if !o.allowUnknown {
			return nil, false, ErrUnknownSerial
		}
		if reason == ReasonRemoveFromCRL {
			return nil, false, ErrNotOnHold
		}
		rec = &certRecord{}
	}
	n := *rec
	switch {
	case reason == ReasonRemoveFromCRL:
		if !rec.Revoked || rec.Reason != ReasonCertificateHold {
			return nil, rec.Revoked, ErrNotOnHold
		}
		n.Revoked, n.RevokedAt, n.Reason = false, 0, 0
	case rec.Revoked && (rec.Reason != ReasonCertificateHold || reason == ReasonCertificateHold):
		return nil, true, ErrAlreadyRevoked
	default:
		n.Revoked, n.RevokedAt, n.Reason = true, at.UnixNano(), reason
	}
	n.Source = sourceStepfort
	return &n, rec.Revoked, nil
}

// afterRevoke writes the revoked-table row, then the change entry (after
// the row is committed, as crlchanges requires), then the counts.
func (s *Store) afterRevoke(issuer string, serial *big.Int, rec *certRecord, created, wasRevoked bool) error {
	key := rowKey(issuer, serial)
	var err error
	if rec.Revoked {
		err = s.db.Set(RevokedTable, key, revokedValue(rec))
	} else if err = s.db.Del(RevokedTable, key); database.IsErrNotFound(err) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("legacy issuer %s: serial %X: write revocation: %w", issuer, serial, err)
	}
	now := s.Now()
	ch := crlchanges.Change{Serial: serial.String(), Reason: rec.Reason, NotAfter: rec.notAfter()}
	if rec.Revoked {
		ch.RevokedAt = rec.revokedAt()
	} else {
		ch.Reason, ch.RevokedAt = ReasonRemoveFromCRL, now.UTC()
	}
	if err := crlchanges.Record(s.db, SeriesPrefix+issuer, ch, now); err != nil {
		return fmt.Errorf("legacy issuer %s: serial %X: record the change for the delta CRL: %w", issuer, serial, err)
	}
	return s.modifyState(issuer, func(st *State) bool {
		st.Changes++
		if created {
			st.Certificates++
		}
		switch {
		case rec.Revoked && !wasRevoked:
			st.Revoked++
		case !rec.Revoked && wasRevoked:
			st.Revoked--
		}
		return true
	})
}
