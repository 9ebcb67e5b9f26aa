package ha

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"

	"golang.org/x/crypto/ocsp"
)

// FuzzOCSPRequest sends arbitrary bytes to a real responder as a POST body
// and as a GET path: every answer is a 200 with an OCSP response (an
// unsigned error status, or a signed response), never an internalError (the
// responder turns a panic into one).
func FuzzOCSPRequest(f *testing.F) {
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Add([]byte("MEIwQDA+MDwwOjAJBgUrDgMCGgUABBQ"))
	h := newTestHost(f)
	r, err := NewResponder(h, DefaultConfig().OCSP)
	if err != nil {
		f.Fatal(err)
	}
	key, err := r.currentSigner()
	if err != nil {
		f.Fatal(err)
	}
	// A well-formed request for our issuer, so mutations explore past the
	// issuer check.
	valid, err := ocsp.CreateRequest(&x509.Certificate{SerialNumber: big.NewInt(12345)}, key.issuer, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	// One with a serial longer than RFC 5280 allows (malformedRequest).
	f.Add(rawRequest(f, key.nameHash[crypto.SHA1], key.keyHash[crypto.SHA1], new(big.Int).Lsh(big.NewInt(1), 20*8), nil))
	check := func(t *testing.T, req *http.Request) {
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/ocsp-response" {
			t.Fatalf("answer %d %q", w.Code, w.Header().Get("Content-Type"))
		}
		body := w.Body.Bytes()
		if bytes.Equal(body, ocsp.InternalErrorErrorResponse) {
			t.Fatal("internalError: the handler panicked")
		}
		if len(body) > 5 {
			if _, err := ocsp.ParseResponse(body, key.issuer); err != nil {
				t.Fatalf("signed answer does not parse: %v", err)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		post := httptest.NewRequest("POST", "/ocsp", bytes.NewReader(data))
		check(t, post)
		get := httptest.NewRequest("GET", "/ocsp/x", nil)
		get.URL.RawPath = "/ocsp/" + string(data)
		get.URL.Path = get.URL.RawPath
		check(t, get)
	})
}
