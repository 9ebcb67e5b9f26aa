package dynamicscep

import (
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/testenv"
)

// FuzzCreateRequest: any body is answered 201, 400 or 413, never a panic
// or another status, and what a 201 stored passes validation again
// unchanged (normalisation is idempotent).
func FuzzCreateRequest(f *testing.F) {
	for _, s := range []string{`{}`, `{"ttl":"30m","commonName":"a","dnsNames":["A.example"]}`, `{"ipAddresses":["::ffff:10.0.0.1"],"uris":["urn:x"]}`,
		`{"emailAddresses":["a@b"]}`, `{"provisioner":"scep","device":""}`, `{`, `[]`, `{"ttl":"1ns"}`, `{"dnsNames":["*.a.b"]}`} {
		f.Add(s)
	}
	p, _ := newPluginOn(f, testenv.OpenStore(f, "bbolt"), "bbolt", defaultConfig())
	r := chi.NewRouter()
	for _, rt := range p.AdminRoutes() {
		r.Method(rt.Method, rt.Pattern, rt.Handler)
	}
	f.Fuzz(func(t *testing.T, body string) {
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/scep/challenges", strings.NewReader(body)))
		switch rec.Code {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return
		case http.StatusCreated:
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		var v ChallengeView
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		again, err := normalizeBindings(v.Bindings)
		if err != nil || mustJSON(again) != mustJSON(v.Bindings) {
			t.Fatalf("stored bindings %s do not validate to themselves: %s %v", mustJSON(v.Bindings), mustJSON(again), err)
		}
	})
}

// FuzzCheckCSR: the binding check never panics, refuses a CSR whose
// common name differs from a bound one and one with an unbound DNS name.
func FuzzCheckCSR(f *testing.F) {
	csr, _ := newCSR(f, csrSpec{cn: "device-001", dns: []string{"device-001.example.test"}, ips: []string{"192.0.2.1"}})
	f.Add(csr.Raw, "device-001", "device-001.example.test")
	f.Add(csr.Raw, "", "")
	f.Add([]byte{0x30, 0x00}, "", "")
	f.Fuzz(func(t *testing.T, der []byte, cn, dns string) {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		b := &Bindings{CommonName: cn, DNSNames: []string{dns}}
		err = CheckCSR(b, csr)
		if err != nil {
			return
		}
		if cn != "" && csr.Subject.CommonName != cn {
			t.Fatalf("CN %q accepted for bound %q", csr.Subject.CommonName, cn)
		}
		for _, n := range csr.DNSNames {
			if !strings.EqualFold(n, dns) && !strings.EqualFold(n, cn) {
				t.Fatalf("DNS name %q accepted for bound %q / CN %q", n, dns, cn)
			}
		}
		if len(csr.IPAddresses) > 0 {
			t.Fatalf("IP %v accepted with no IP bound", csr.IPAddresses)
		}
	})
}
