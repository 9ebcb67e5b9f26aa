package ha

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/certstatus"
	"github.com/stepfort/stepfort/plugins"
)

// maxRequest bounds an OCSP request (a few hundred bytes in practice).
const maxRequest = 16 << 10

// Responder answers OCSP requests (RFC 6960, RFC 5019 profile) from the
// shared database. Each request reads the revocation row, so a revocation
// made through any replica is answered at once by every replica; signed
// responses are cached per replica and reused while the status is unchanged
// and the response is younger than half its validity.
type Responder struct {
	host     plugins.Host
	store    nosql.DB
	cfg      OCSPConfig
	log      *slog.Logger
	requests *prometheus.CounterVec
	cacheHit prometheus.Counter

	mu     sync.Mutex
	signer *responderKey
	cache  map[cacheKey]*cachedResponse
}

type cacheKey struct {
	serial string
	hash   crypto.Hash
}

type cachedResponse struct {
	der        []byte
	etag       string
	revoked    bool
	thisUpdate time.Time
	nextUpdate time.Time
}

// NewResponder builds a responder for the host's current issuing CA.
func NewResponder(h plugins.Host, cfg OCSPConfig) (*Responder, error) {
	r := &Responder{host: h, store: h.DB(), cfg: cfg, log: h.Logger(), cache: map[cacheKey]*cachedResponse{}}
	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "ocsp", Name: "responses_total", Help: "OCSP responses by certificate status or error"}, []string{"status"})
	r.cacheHit = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "ocsp", Name: "cache_hits_total", Help: "OCSP responses served from the signed-response cache"})
	for _, c := range []prometheus.Collector{r.requests, r.cacheHit} {
		if err := h.Metrics().Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return nil, err
			}
		}
	}
	if _, err := r.currentSigner(); err != nil {
		return nil, err
	}
	return r, nil
}

// ServeHTTP handles POST (body) and GET (base64 in the path) requests.
func (r *Responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	defer func() {
		if rec := recover(); rec != nil {
			r.log.Error("ocsp handler panic", "panic", fmt.Sprint(rec))
			r.writeError(w, ocsp.InternalErrorErrorResponse, "internalError")
		}
	}()
	raw, err := requestBytes(req)
	if err != nil {
		r.writeError(w, ocsp.MalformedRequestErrorResponse, "malformedRequest")
		return
	}
	ocspReq, err := ocsp.ParseRequest(raw)
	if err != nil {
		r.writeError(w, ocsp.MalformedRequestErrorResponse, "malformedRequest")
		return
	}
	resp, err := r.respond(ocspReq)
	if errors.Is(err, errNotOurIssuer) {
		r.writeError(w, ocsp.UnauthorizedErrorResponse, "unauthorized")
		return
	}
	if err != nil {
		r.log.Error("ocsp response", "serial", ocspReq.SerialNumber.String(), "error", err)
		r.writeError(w, ocsp.TryLaterErrorResponse, "tryLater")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/ocsp-response")
	h.Set("Last-Modified", resp.thisUpdate.UTC().Format(http.TimeFormat))
	h.Set("Expires", resp.nextUpdate.UTC().Format(http.TimeFormat))
	maxAge := max(0, int(time.Until(resp.nextUpdate).Seconds()))
	h.Set("Cache-Control", "max-age="+strconv.Itoa(maxAge)+", public, no-transform, must-revalidate")
	h.Set("ETag", resp.etag)
	if match := req.Header.Get("If-None-Match"); match != "" && match == resp.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(resp.der)
}

// requestBytes extracts the DER request. GET carries it URL-encoded base64
// after the last "/ocsp/"; the raw path is used so "/" and "+" survive.
func requestBytes(req *http.Request) ([]byte, error) {
	if req.Method == http.MethodPost {
		return io.ReadAll(io.LimitReader(req.Body, maxRequest))
	}
	p := req.URL.EscapedPath()
	i := strings.Index(p, "/ocsp/")
	if i < 0 {
		return nil, errors.New("no request in path")
	}
	enc, err := url.PathUnescape(p[i+len("/ocsp/"):])
	if err != nil || len(enc) > maxRequest {
		return nil, errors.New("bad path encoding")
	}
	enc = strings.TrimRight(enc, "=")
	return base64.RawStdEncoding.DecodeString(enc)
}

var errNotOurIssuer = errors.New("request names another issuer")

// respond returns a signed response for the request, from cache if valid.
func (r *Responder) respond(req *ocsp.Request) (*cachedResponse, error) {
	key, err := r.currentSigner()
	if err != nil {
		return nil, err
	}
	if !key.issuedBy(req) {
		return nil, errNotOurIssuer
	}
	serial := req.SerialNumber.String()
	rci, err := certstatus.Revocation(r.store, serial)
	if err != nil {
		return nil, err
	}
	ck := cacheKey{serial, req.HashAlgorithm}
	r.mu.Lock()
	cached := r.cache[ck]
	r.mu.Unlock()
	if cached != nil && cached.revoked == (rci != nil) && r.host.Now().Before(cached.thisUpdate.Add(r.cfg.Validity.Duration/2)) {
		r.cacheHit.Inc()
		r.requests.WithLabelValues(statusName(cached.revoked, true)).Inc()
		return cached, nil
	}
	known := rci != nil
	if !known {
		if known, err = certstatus.Issued(r.store, serial); err != nil {
			return nil, err
		}
	}
	resp, err := r.sign(key, req.SerialNumber, req.HashAlgorithm, rci, known)
	if err != nil {
		return nil, err
	}
	r.requests.WithLabelValues(statusName(rci != nil, known)).Inc()
	return resp, nil
}

// sign makes a response and caches it when the serial is ours (unknown
// serials are not cached, so a flood of made-up serials cannot fill memory).
func (r *Responder) sign(key *responderKey, serialNumber *big.Int, hash crypto.Hash, rci *db.RevokedCertificateInfo, known bool) (*cachedResponse, error) {
	now := r.host.Now()
	tmpl := ocsp.Response{
		SerialNumber: serialNumber,
		ThisUpdate:   now.Add(-time.Minute).Truncate(time.Second), // clock skew
		NextUpdate:   now.Add(r.cfg.Validity.Duration).Truncate(time.Second),
		IssuerHash:   hash,
		Status:       ocsp.Good,
		Certificate:  key.cert, // nil when the CA key signs
	}
	switch {
	case rci != nil:
		tmpl.Status = ocsp.Revoked
		tmpl.RevokedAt = rci.RevokedAt
		tmpl.RevocationReason = rci.ReasonCode
	case !known:
		tmpl.Status = ocsp.Unknown // never "good" for a serial this CA did not issue
	}
	der, err := ocsp.CreateResponse(key.issuer, key.responderCert(), tmpl, key.signer)
	if err != nil {
		return nil, fmt.Errorf("sign OCSP response: %w", err)
	}
	sum := sha256.Sum256(der)
	resp := &cachedResponse{der: der, etag: `"` + hex.EncodeToString(sum[:16]) + `"`, revoked: rci != nil, thisUpdate: tmpl.ThisUpdate, nextUpdate: tmpl.NextUpdate}
	if known {
		r.mu.Lock()
		if r.signer == key { // not replaced by a rotation meanwhile
			r.cache[cacheKey{serialNumber.String(), hash}] = resp
		}
		r.mu.Unlock()
	}
	return resp, nil
}

// RefreshLoop re-signs cached responses before they reach half their
// validity, so clients are answered from pre-signed responses, until ctx
// ends.
func (r *Responder) RefreshLoop(ctx context.Context) {
	t := time.NewTicker(max(time.Minute, r.cfg.Validity.Duration/20))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Refresh()
		}
	}
}

// Refresh re-signs every cached response older than 40% of its validity.
// It returns how many it re-signed.
func (r *Responder) Refresh() int {
	key, err := r.currentSigner()
	if err != nil {
		r.log.Error("OCSP refresh", "error", err)
		return 0
	}
	due := r.host.Now().Add(-r.cfg.Validity.Duration * 2 / 5)
	r.mu.Lock()
	var stale []cacheKey
	for k, v := range r.cache {
		if v.thisUpdate.Before(due) {
			stale = append(stale, k)
		}
	}
	r.mu.Unlock()
	n := 0
	for _, k := range stale {
		serial, ok := new(big.Int).SetString(k.serial, 10)
		if !ok {
			continue
		}
		rci, err := certstatus.Revocation(r.store, k.serial)
		if err != nil {
			r.log.Warn("OCSP refresh", "serial", k.serial, "error", err)
			continue
		}
		if _, err := r.sign(key, serial, k.hash, rci, true); err == nil {
			n++
		}
	}
	return n
}

func statusName(revoked, known bool) string {
	switch {
	case revoked:
		return "revoked"
	case !known:
		return "unknown"
	default:
		return "good"
	}
}

func (r *Responder) writeError(w http.ResponseWriter, body []byte, status string) {
	r.requests.WithLabelValues(status).Inc()
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// responderKey is what signs responses: the intermediate itself, or a
// delegated responder certificate issued by it.
type responderKey struct {
	issuer *x509.Certificate
	cert   *x509.Certificate // nil when the CA key signs
	signer crypto.Signer
	// name and key hashes of the issuer, per hash algorithm
	nameHash, keyHash map[crypto.Hash][]byte
}

func (k *responderKey) responderCert() *x509.Certificate {
	if k.cert != nil {
		return k.cert
	}
	return k.issuer
}

func (k *responderKey) issuedBy(req *ocsp.Request) bool {
	nh, ok := k.nameHash[req.HashAlgorithm]
	if !ok {
		return false
	}
	return bytes.Equal(nh, req.IssuerNameHash) && bytes.Equal(k.keyHash[req.HashAlgorithm], req.IssuerKeyHash)
}

// currentSigner returns the signing key, issuing a new delegated responder
// certificate when there is none or the current one is past half its life.
// A response is never valid longer than its responder certificate.
func (r *Responder) currentSigner() (*responderKey, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.host.Now()
	if k := r.signer; k != nil && (k.cert == nil || now.Before(k.cert.NotBefore.Add(k.cert.NotAfter.Sub(k.cert.NotBefore)/2))) {
		return k, nil
	}
	auth := r.host.Authority()
	inters := auth.GetIntermediateCertificates()
	if len(inters) == 0 {
		return nil, errors.New("no intermediate certificate to answer OCSP for")
	}
	caSigner, err := auth.GetX509Signer()
	if err != nil {
		return nil, fmt.Errorf("OCSP signer: %w", err)
	}
	k := &responderKey{issuer: inters[0], signer: caSigner}
	if err := k.hashIssuer(); err != nil {
		return nil, err
	}
	if r.cfg.Signer == "delegated" {
		if err := k.delegate(now, r.cfg.ResponderLifetime.Duration); err != nil {
			return nil, err
		}
		r.log.Info("OCSP responder certificate issued", "serial", k.cert.SerialNumber.String(), "notAfter", k.cert.NotAfter)
	}
	r.signer = k
	r.cache = map[cacheKey]*cachedResponse{} // responses name the responder
	return k, nil
}

// oidOCSPNoCheck tells clients not to check the responder certificate's own
// revocation (RFC 6960 4.2.2.2.1).
var oidOCSPNoCheck = []int{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

func (k *responderKey) delegate(now time.Time, lifetime time.Duration) error {
	key, err := newResponderKey()
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         k.issuer.Subject,
		NotBefore:       now.Add(-time.Minute),
		NotAfter:        now.Add(lifetime),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		ExtraExtensions: []pkixExtension{{Id: oidOCSPNoCheck, Value: []byte{0x05, 0x00}}},
	}
	tmpl.Subject.CommonName = k.issuer.Subject.CommonName + " OCSP Responder"
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.issuer, key.Public(), k.signer)
	if err != nil {
		return fmt.Errorf("issue OCSP responder certificate: %w", err)
	}
	if k.cert, err = x509.ParseCertificate(der); err != nil {
		return err
	}
	k.signer = key
	return nil
}
