package legacy

import (
	"errors"
	"math/big"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/adcs/adcstest"
	"github.com/stepfort/stepfort/internal/crlchanges"
	"github.com/stepfort/stepfort/internal/testenv"
)

func openTestStore(t *testing.T, backend string) *Store {
	t.Helper()
	s, err := OpenStore(testenv.OpenStore(t, backend))
	must(t, err)
	s.Now = func() time.Time { return t0 }
	return s
}

// Revoke after cut-over: refuses unknown and already revoked serials,
// moves a hold to another reason, releases a hold with removeFromCRL, and
// records each change for the delta CRL without bumping Version.
func TestStoreRevoke(t *testing.T) {
	for _, backend := range testenv.Backends {
		t.Run(backend, func(t *testing.T) {
			s := openTestStore(t, backend)
			ca := newCA(t, "Corp Issuing CA 1")
			dir := t.TempDir()
			f := export(t, dir, "db.txt", row(2, -1, time.Time{}), row(3, -1, time.Time{}), row(4, 1, t0.Add(-time.Hour)))
			rep, err := s.Import([]string{f}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert})
			must(t, err)
			if rep.New != 3 || rep.Version != 1 {
				t.Fatalf("import: %+v", rep)
			}
			s2, s3, s4 := adcstest.SyntheticSerial(2), adcstest.SyntheticSerial(3), adcstest.SyntheticSerial(4)
			unknown := big.NewInt(77)
			if err := s.Revoke("corp", unknown, 1, t0); !errors.Is(err, ErrUnknownSerial) {
				t.Fatalf("unknown serial: %v", err)
			}
			if err := s.Revoke("corp", s4, 1, t0); !errors.Is(err, ErrAlreadyRevoked) {
				t.Fatalf("revoked twice: %v", err)
			}
			if err := s.Revoke("corp", s2, 7, t0); !errors.Is(err, ErrBadReason) {
				t.Fatalf("reason 7: %v", err)
			}
			if err := s.Revoke("corp", s3, ReasonRemoveFromCRL, t0); !errors.Is(err, ErrNotOnHold) {
				t.Fatalf("release of a good certificate: %v", err)
			}
			must(t, s.Revoke("corp", s2, ReasonCertificateHold, t0))
			must(t, s.Revoke("corp", s2, 4, t0.Add(time.Minute))) // hold -> superseded
			if err := s.Revoke("corp", s2, 1, t0); !errors.Is(err, ErrAlreadyRevoked) {
				t.Fatalf("superseded -> keyCompromise: %v", err)
			}
			must(t, s.Revoke("corp", s3, ReasonCertificateHold, t0))
			must(t, s.Revoke("corp", s3, ReasonRemoveFromCRL, t0.Add(2*time.Minute)))
			must(t, s.Revoke("corp", unknown, 5, t0, AllowUnknown()))

			want := map[string]Status{
				s2.String():      {Code: ocsp.Revoked, RevokedAt: t0.Add(time.Minute), Reason: 4},
				s3.String():      {Code: ocsp.Good},
				s4.String():      {Code: ocsp.Revoked, RevokedAt: t0.Add(-time.Hour), Reason: 1},
				unknown.String(): {Code: ocsp.Revoked, RevokedAt: t0, Reason: 5},
			}
			for dec, w := range want {
				n, _ := new(big.Int).SetString(dec, 10)
				st, err := s.Status("corp", n)
				must(t, err)
				if st.Code != w.Code || !st.RevokedAt.Equal(w.RevokedAt) || st.Reason != w.Reason {
					t.Errorf("serial %X: %+v, want %+v", n, st, w)
				}
			}
			if st, _ := s.Status("other", s2); st.Code != ocsp.Unknown {
				t.Errorf("another issuer sees serial %X: %+v", s2, st)
			}
			revoked := map[string]int{}
			must(t, s.ForEachRevoked("corp", func(serial []byte, at time.Time, reason int, notAfter time.Time) error {
				revoked[string(serial)] = reason
				return nil
			}))
			if len(revoked) != 3 || revoked[s2.String()] != 4 || revoked[unknown.String()] != 5 {
				t.Errorf("revoked table: %v", revoked)
			}
			latest, _, err := crlchanges.List(s.DB(), "legacy/corp")
			must(t, err)
			got := map[string]int{}
			for _, c := range latest {
				got[c.Serial] = c.Reason
			}
			if got[s2.String()] != 4 || got[s3.String()] != crlchanges.RemoveFromCRL || got[unknown.String()] != 5 || len(got) != 3 {
				t.Errorf("changes for the delta: %v", got)
			}
			st, err := s.State("corp")
			must(t, err)
			if st.Version != 1 || st.Certificates != 4 || st.Revoked != 3 {
				t.Errorf("state %+v: want version 1 (Revoke does not bump it), 4 certificates, 3 revoked", st)
			}
		})
	}
}
