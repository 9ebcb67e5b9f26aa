package legacy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/internal/adcs/adcstest"
	"github.com/stepfort/stepfort/internal/testenv"
)

func status(t *testing.T, s *Store, id int64) Status {
	t.Helper()
	st, err := s.Status("corp", adcstest.SyntheticSerial(id))
	must(t, err)
	return st
}

// One bad row refuses the whole import (nothing written); with
// AllowPartial the others are imported; the report names file, line and
// field.
func TestImportAllOrNothing(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			s := openTestStore(t, backend)
			ca, other := newCA(t, "Corp Issuing CA 1"), newCA(t, "Other CA")
			dir := t.TempDir()
			good := row(2, -1, time.Time{})
			foreign := row(3, -1, time.Time{})
			foreign.Certificate = other.leaf(t, foreign.Serial) // signed by another CA
			pending := adcs.Row{RequestID: 4, Disposition: 9, Reason: -1}
			f := export(t, dir, "db.txt", good, foreign, pending)
			var log bytes.Buffer
			rep, err := s.Import([]string{f}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert, Log: &log})
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("err = %v, want ErrRefused", err)
			}
			if rep.Refused != 1 || rep.Skipped != 1 || rep.Imported != 1 || rep.Rows != 3 {
				t.Errorf("report %+v", rep)
			}
			if !regexpMatch(log.String(), `db\.txt: line \d+: column RawCertificate: not issued by CN=Corp Issuing CA 1`) ||
				!strings.Contains(log.String(), "skipped: disposition 9 (pending)") {
				t.Errorf("per-row report:\n%s", log.String())
			}
			if st := status(t, s, 2); st.Code != ocsp.Unknown {
				t.Fatalf("a refused import wrote row 2: %+v", st)
			}
			if st, _ := s.State("corp"); st.Version != 0 {
				t.Fatalf("state after a refused import: %+v", st)
			}
			rep, err = s.Import([]string{f}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert, AllowPartial: true})
			must(t, err)
			if rep.New != 1 || rep.Refused != 1 || status(t, s, 2).Code != ocsp.Good || status(t, s, 3).Code != ocsp.Unknown {
				t.Fatalf("partial import: %+v", rep)
			}
		})
	}
}

func regexpMatch(s, re string) bool {
	return regexpMust(re).MatchString(s)
}

// CRLs give exact times and the number floor; a serial only on the CRL is
// imported revoked; re-import changes nothing; a dry run writes nothing.
func TestImportCRLsIdempotentDryRun(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			s := openTestStore(t, backend)
			ca := newCA(t, "Corp Issuing CA 1")
			dir := t.TempDir()
			exact := t0.Add(-90*time.Minute + 17*time.Second)
			rows := []adcs.Row{row(2, -1, time.Time{}), row(3, 1, exact.Truncate(time.Minute)), row(4, -1, time.Time{})}
			f := export(t, dir, "db.txt", rows...)
			base := ca.crl(t, dir, 41, 0, t0.Add(-time.Hour), entry(rows[1].Serial, exact, 1),
				entry(adcstest.SyntheticSerial(99), exact, 5), entry(rows[2].Serial, exact, ReasonCertificateHold))
			delta := ca.crl(t, dir, 42, 41, t0, entry(rows[2].Serial, t0, ReasonRemoveFromCRL)) // hold released
			files := []string{f, base, delta}

			dry, err := s.Import(files, ImportOptions{Issuer: "corp", IssuerCert: ca.cert, DryRun: true})
			must(t, err)
			if dry.New != 4 || dry.CRLOnly != 1 || dry.RevocationsAdded != 2 || dry.CRLNumberFloor != 42 || dry.Written {
				t.Fatalf("dry run: %+v", dry)
			}
			if st, _ := s.State("corp"); st != (State{}) || status(t, s, 2).Code != ocsp.Unknown {
				t.Fatalf("a dry run wrote: %+v", st)
			}
			rep, err := s.Import(files, ImportOptions{Issuer: "corp", IssuerCert: ca.cert})
			must(t, err)
			if rep.New != 4 || rep.Version != 1 {
				t.Fatalf("import: %+v", rep)
			}
			if st := status(t, s, 3); st.Code != ocsp.Revoked || !st.RevokedAt.Equal(exact) || st.Reason != 1 {
				t.Errorf("serial 3: %+v, want the CRL's exact time %s", st, exact)
			}
			if st := status(t, s, 99); st.Code != ocsp.Revoked || st.Reason != 5 || !st.NotAfter.IsZero() {
				t.Errorf("CRL-only serial: %+v", st)
			}
			if st := status(t, s, 4); st.Code != ocsp.Good {
				t.Errorf("released hold: %+v", st)
			}
			st, _ := s.State("corp")
			if st.CRLNumberFloor != 42 || st.Certificates != 4 || st.Revoked != 2 {
				t.Errorf("state %+v", st)
			}
			again, err := s.Import(files, ImportOptions{Issuer: "corp", IssuerCert: ca.cert})
			must(t, err)
			if again.New+again.Changed != 0 || again.Unchanged != 4 || again.Version != 1 {
				t.Errorf("re-import: %+v, want everything unchanged and version 1", again)
			}
			// A later export with a row now revoked: one change, version 2.
			rows[0] = row(2, 4, t0)
			rep, err = s.Import([]string{export(t, dir, "db2.txt", rows...), base, delta}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert})
			must(t, err)
			if rep.Changed != 1 || rep.RevocationsAdded != 1 || rep.Version != 2 {
				t.Errorf("second export: %+v", rep)
			}
			// Check compares with the CRLs: row 2 was revoked after them.
			chk, err := s.Check("corp", ca.cert, []string{base, delta})
			must(t, err)
			if chk.Total != 0 {
				t.Errorf("check: %v", chk.Differences)
			}
			must(t, s.Revoke("corp", adcstest.SyntheticSerial(4), 1, t0.Add(-2*time.Hour)))
			chk, err = s.Check("corp", ca.cert, []string{base, delta})
			must(t, err)
			if chk.Total != 1 || !strings.Contains(chk.Differences[0], "not on the CRL") {
				t.Errorf("check after a revocation before thisUpdate: %v", chk.Differences)
			}
		})
	}
}

// A CRL the issuer did not sign fails the import before anything is
// written.
func TestImportRefusesCRLOfAnotherIssuer(t *testing.T) {
	s := openTestStore(t, "bbolt")
	ca, other := newCA(t, "Corp Issuing CA 1"), newCA(t, "Other CA")
	dir := t.TempDir()
	f := export(t, dir, "db.txt", row(2, -1, time.Time{}))
	foreign := other.crl(t, dir, 7, 0, t0)
	_, err := s.Import([]string{f, foreign}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert})
	if err == nil || !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), "nothing was imported") {
		t.Fatalf("err = %v", err)
	}
	if status(t, s, 2).Code != ocsp.Unknown {
		t.Fatal("rows written despite a foreign CRL")
	}
}

// The CSV form: bad rows are reported with line and field.
func TestImportCSVBadRows(t *testing.T) {
	s := openTestStore(t, "bbolt")
	ca := newCA(t, "Corp Issuing CA 1")
	dir := t.TempDir()
	var b bytes.Buffer
	rows := []adcs.Row{row(2, -1, time.Time{}), row(3, -1, time.Time{})}
	must(t, adcstest.WriteCSV(&b, func(yield func(adcs.Row) bool) {
		for _, r := range rows {
			if !yield(r) {
				return
			}
		}
	}, adcstest.Opts{}))
	// Break the first row's expiry date (the header is line 1).
	data := bytes.Replace(b.Bytes(), []byte(rows[1].NotAfter.Format("1/2/2006 3:04 PM")), []byte("31/31/2027 9:99 XM"), 1)
	if bytes.Equal(data, b.Bytes()) {
		t.Fatal("test did not change the export")
	}
	p := filepath.Join(dir, "db.csv")
	must(t, os.WriteFile(p, data, 0o600))
	var log bytes.Buffer
	_, err := s.Import([]string{p}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert, Log: &log})
	if !errors.Is(err, ErrRefused) || !regexpMatch(log.String(), `db\.csv: line 2: column NotAfter: `) {
		t.Fatalf("err %v, report:\n%s", err, log.String())
	}
}
