package ha

import (
	"bytes"
	"context"
	"crypto"
	"crypto/fips140"
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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/nosql"
	"golang.org/x/crypto/ocsp"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Bounds of what a request may be; they are checked before anything is
// kept, since anyone can send requests.
const (
	// maxRequest bounds an OCSP request: a POST body, or what a GET path
	// decodes to (a few hundred bytes in practice; a signed request with
	// its certificates a few KiB).
	maxRequest = 16 << 10
	// maxRequestPath bounds the escaped GET path after "/ocsp/": the
	// base64 of maxRequest, every character percent-encoded.
	maxRequestPath = 3 * ((maxRequest + 2) / 3 * 4)
	// maxSerialBits: RFC 5280 4.1.2.2 allows at most 20 octets. Longer
	// serials are answered malformedRequest, so no cache ever holds one.
	maxSerialBits = 20 * 8
	// maxSerialDigits is the longest decimal form of such a serial (49
	// digits and a sign).
	maxSerialDigits = 50
	// maxCachedRequest: longer requests (with a large nonce, or signed)
	// are parsed every time instead of taking room in the parsed-request
	// cache; plain ones are under 200 bytes, with a nonce under 300.
	maxCachedRequest = 512
)

// Responder answers OCSP requests (RFC 6960, RFC 5019 profile) for
// stepfort's own issuing CA and for legacy issuers (AddLegacyIssuer), each
// request routed to its issuer by its CertID (route). For stepfort's own
// issuer the status of a serial comes from a statusIndex: in memory while the index is live
// (kept current by this replica's writes and, on PostgreSQL, by
// notifications from every replica), otherwise from the shared database on
// every request. Signed responses are cached per replica, pre-signed when a
// certificate is issued or revoked, reused while the status is unchanged and
// the response is younger than half its validity, and re-signed in the
// background before that.
type Responder struct {
	host  plugins.Host
	store nosql.DB
	cfg   OCSPConfig
	log   *slog.Logger
	idx   *statusIndex

	requests *prometheus.CounterVec
	cacheHit prometheus.Counter
	byStatus map[string]prometheus.Counter

	presign chan *big.Int

	parsedMu    sync.RWMutex
	parsed      map[string]*parsedRequest // by request DER, only for our issuer
	parsedBound byteBound[string, *parsedRequest]

	// own is stepfort's issuing CA; legacy holds the legacy issuers,
	// replaced whole (copy on write) so routing takes no lock.
	own    *ocspIssuer
	legacy atomic.Pointer[legacyRoutes]

	mu           sync.RWMutex                 // guards the caches and every ocspIssuer.key
	cache        map[cacheKey]*cachedResponse // serials the issuer issued
	cacheBound   byteBound[cacheKey, *cachedResponse]
	unknown      map[cacheKey]*cachedResponse // serials it did not
	unknownBound byteBound[cacheKey, *cachedResponse]
	// signerFailed is when a failure to make an issuer's responder
	// certificate was last recorded in the audit trail (r.mu held).
	signerFailed map[string]time.Time

	// kmsKey is ocsp.responderKey opened (nil: keys are made in memory):
	// every delegated certificate of stepfort's own issuer is issued for
	// it. closeKMS releases it.
	kmsKey   crypto.Signer
	closeKMS func() error
}

// cacheKey names a signed response: issuer (ocspIssuer.id), serial and
// CertID hash algorithm (the response repeats the request's CertID).
type cacheKey struct {
	issuer uint32
	serial string
	hash   crypto.Hash
}

// cachedResponse is a signed response with its precomputed headers.
type cachedResponse struct {
	der          []byte
	etag         []string
	lastModified []string
	expires      []string
	status       certStatus
	thisUpdate   time.Time
	nextUpdate   time.Time
	// seen is, for a legacy issuer, its change counter when the status was
	// read (-1: read it again); see legacyFresh.
	seen atomic.Int64
}

// NewResponder builds a responder for the host's issuing CA. It reads
// every status from the database until StartStatusFeed runs. The signing
// key is made on first use: the authority may not exist yet while plugins
// are built; a KMS responder key (ocsp.responderKey) is opened here, so a
// wrong URI, PIN or key stops the start. Close releases it.
func NewResponder(h plugins.Host, cfg OCSPConfig) (*Responder, error) {
	r := &Responder{host: h, store: h.DB(), cfg: cfg, log: h.Logger(), idx: newStatusIndex(),
		own:   &ocspIssuer{name: ownIssuerName},
		cache: map[cacheKey]*cachedResponse{}, unknown: map[cacheKey]*cachedResponse{}, presign: make(chan *big.Int, 4096),
		parsed: map[string]*parsedRequest{}}
	def := DefaultConfig().OCSP
	r.parsedBound = byteBound[string, *parsedRequest]{maxEntries: maxParsedCached, maxBytes: orDefault(cfg.RequestCacheBytes, def.RequestCacheBytes), size: requestSize}
	r.cacheBound = byteBound[cacheKey, *cachedResponse]{maxEntries: orDefault(cfg.CacheSize, def.CacheSize), maxBytes: orDefault(cfg.CacheBytes, def.CacheBytes), size: responseSize}
	r.unknownBound = byteBound[cacheKey, *cachedResponse]{maxEntries: maxUnknownCached, maxBytes: orDefault(cfg.UnknownCacheBytes, def.UnknownCacheBytes), size: responseSize}
	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "ocsp", Name: "responses_total", Help: "OCSP responses by certificate status or error"}, []string{"status"})
	r.cacheHit = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "stepfort", Subsystem: "ocsp", Name: "cache_hits_total", Help: "OCSP responses served from the signed-response cache"})
	var err error
	if r.requests, err = register(h.Metrics(), r.requests); err != nil {
		return nil, err
	}
	if r.cacheHit, err = register(h.Metrics(), r.cacheHit); err != nil {
		return nil, err
	}
	// Resolved once: a label lookup per response is measurable at 10k/s.
	r.byStatus = map[string]prometheus.Counter{}
	for _, s := range []string{"good", "revoked", "unknown", "malformedRequest", "unauthorized", "tryLater", "internalError"} {
		r.byStatus[s] = r.requests.WithLabelValues(s)
	}
	if cfg.ResponderKey != "" {
		if r.kmsKey, r.closeKMS, err = openResponderKey(cfg.ResponderKey); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Close releases the KMS responder key, if any.
func (r *Responder) Close() error {
	if r.closeKMS == nil {
		return nil
	}
	return r.closeKMS()
}

// fixedKey is the responder key iss's delegated certificates are issued
// for: ocsp.responderKey for stepfort's own issuer, nil (a key made in
// memory at every rotation) otherwise.
func (r *Responder) fixedKey(iss *ocspIssuer) crypto.Signer {
	if iss.cert != nil {
		return nil // legacy issuers keep generated keys
	}
	return r.kmsKey
}

// StartStatusFeed loads the revoked set and has it kept current while the
// daemon serves (host.Go): on PostgreSQL through notifications (the index
// is live only while the feed is); on bbolt and badger, which one process
// at a time can open, this replica's own writes are the complete feed.
// Other databases (MySQL) keep reading per request. It also starts the
// pre-signer.
func (r *Responder) StartStatusFeed() error {
	r.host.Go("ocsp-presign", r.presignLoop)
	switch backend := r.host.Backend(); {
	case backend == "postgresql":
		if f := newPGFeed(r.store, r.idx, r.log, r.host.Metrics()); f != nil {
			f.changed = r.schedulePresign
			r.host.Go("ocsp-status-feed", f.Run)
		}
		return nil
	case backend == "bbolt" || strings.HasPrefix(backend, "badger"):
		n, err := r.idx.load(r.store)
		if err != nil {
			return err
		}
		r.log.Info("OCSP status cache live", "revoked", n, "database", backend)
		return nil
	default:
		r.log.Info("OCSP status cache off: no change feed for this database; every request reads the database", "database", backend)
		return nil
	}
}

// Committed is told about this replica's issuances and revocations before
// the request that made them is answered, so the replica reads its writes.
func (r *Responder) Committed(ev plugins.CertificateEvent) {
	switch ev.Kind {
	case plugins.EventIssued, plugins.EventRenewed:
		r.idx.issuedNow(ev.Serial)
	case plugins.EventRevoked:
		if ev.Revocation == nil {
			return
		}
		r.idx.revokedNow(ev.Serial, revocation{at: ev.Revocation.RevokedAt, reason: ev.Revocation.ReasonCode})
	default:
		return
	}
	r.schedulePresign(ev.Serial)
}

// schedulePresign queues a response for the CertID hash clients ask with
// (presignHash) to be signed ahead of the first request; a full queue just means the
// first request signs it.
func (r *Responder) schedulePresign(serial string) {
	sn, ok := new(big.Int).SetString(serial, 10)
	if !ok {
		return
	}
	select {
	case r.presign <- sn:
	default:
	}
}

// presignLoop signs queued responses until ctx ends. It first makes the
// signing key, so the first request does not wait for it (the authority
// exists once the daemon serves).
func (r *Responder) presignLoop(ctx context.Context) {
	if _, err := r.currentSigner(); err != nil {
		r.log.Error("OCSP signer", "error", err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case sn := <-r.presign:
			key, err := r.currentSigner()
			if err != nil {
				continue
			}
			if _, err := r.lookupAndSign(r.own, key, sn, sn.String(), presignHash(), false); err != nil {
				r.log.Debug("OCSP pre-sign", "serial", sn.String(), "error", err)
			}
		}
	}
}

// presignHash is the CertID hash responses are pre-signed for: SHA-1, what
// RFC 5019 clients ask with, except under GODEBUG=fips140=only, where
// SHA-1 CertIDs are refused (ha/keys.go) and SHA-256 is what clients can
// use.
func presignHash() crypto.Hash {
	if fips140.Enforced() {
		return crypto.SHA256
	}
	return crypto.SHA1
}

var (
	hdrContentType  = []string{"application/ocsp-response"}
	hdrNoStore      = []string{"no-store"}
	cacheControlEnd = ", public, no-transform, must-revalidate"
)

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
		r.log.Debug("ocsp request", "error", err)
		r.writeError(w, ocsp.MalformedRequestErrorResponse, "malformedRequest")
		return
	}
	q, err := r.parse(raw)
	if err != nil {
		r.log.Debug("ocsp request", "error", err)
		r.writeError(w, ocsp.MalformedRequestErrorResponse, "malformedRequest")
		return
	}
	resp, err := r.respondTo(q)
	if errors.Is(err, errNotOurIssuer) {
		r.writeError(w, ocsp.UnauthorizedErrorResponse, "unauthorized")
		return
	}
	if err != nil {
		r.log.Error("ocsp response", "serial", q.serial, "error", err)
		r.writeError(w, ocsp.TryLaterErrorResponse, "tryLater")
		return
	}
	// Header values are assigned directly (canonical names, shared slices
	// nobody mutates) to keep the hot path free of formatting.
	h := w.Header()
	h["Content-Type"] = hdrContentType
	h["Last-Modified"] = resp.lastModified
	h["Expires"] = resp.expires
	h["Etag"] = resp.etag
	maxAge := max(0, int(resp.nextUpdate.Sub(r.host.Now())/time.Second))
	h["Cache-Control"] = []string{"max-age=" + strconv.Itoa(maxAge) + cacheControlEnd}
	if match := req.Header.Get("If-None-Match"); match != "" && match == resp.etag[0] {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(resp.der)
}

// requestBytes extracts the DER request. GET carries it URL-encoded base64
// after the last "/ocsp/"; the raw path is used so "/" and "+" survive.
func requestBytes(req *http.Request) ([]byte, error) {
	if req.Method == http.MethodPost {
		raw, err := io.ReadAll(io.LimitReader(req.Body, maxRequest+1))
		if err == nil && len(raw) > maxRequest {
			err = fmt.Errorf("request body larger than %d bytes", maxRequest)
		}
		return raw, err
	}
	p := req.URL.EscapedPath()
	i := strings.Index(p, "/ocsp/")
	if i < 0 {
		return nil, errors.New("no request in path")
	}
	if len(p)-i-len("/ocsp/") > maxRequestPath {
		return nil, fmt.Errorf("request path longer than %d bytes", maxRequestPath)
	}
	enc, err := url.PathUnescape(p[i+len("/ocsp/"):])
	if err != nil {
		return nil, errors.New("bad path encoding")
	}
	enc = strings.TrimRight(enc, "=")
	if base64.RawStdEncoding.DecodedLen(len(enc)) > maxRequest {
		return nil, fmt.Errorf("request larger than %d bytes", maxRequest)
	}
	return base64.RawStdEncoding.DecodeString(enc)
}

var errNotOurIssuer = errors.New("request names another issuer")

// parsedRequest is what the responder needs from a request, kept per
// distinct request so repeated requests (the normal case: clients and
// caches ask again and again) skip ASN.1 parsing.
type parsedRequest struct {
	serialNumber *big.Int
	serial       string // decimal, as upstream keys certificates
	hash         crypto.Hash
	issuerName   []byte
	issuerKey    []byte
}

// maxParsedCached bounds the parsed-request cache in entries (its bytes
// are bounded by ocsp.requestCacheBytes).
const maxParsedCached = 1 << 16

// Estimated bytes of a cache entry besides its variable-length parts
// (structs, header strings, the map slot), so the byte bounds hold for
// small entries too.
const (
	requestEntryOverhead  = 192
	responseEntryOverhead = 384
)

func requestSize(raw string, q *parsedRequest) int64 {
	return int64(len(raw) + len(q.serial) + (q.serialNumber.BitLen()+7)/8 + len(q.issuerName) + len(q.issuerKey) + requestEntryOverhead)
}

func responseSize(k cacheKey, v *cachedResponse) int64 {
	return int64(len(k.serial) + len(v.der) + responseEntryOverhead)
}

// parse returns the request's parsed form: from cache, or parsed and
// checked. A serial longer than RFC 5280 allows is an error. Only requests
// for our issuer are cached, and only short ones, so what the cache holds
// is bounded by what legitimate clients ask, not by what anyone sends.
func (r *Responder) parse(raw []byte) (*parsedRequest, error) {
	r.parsedMu.RLock()
	q := r.parsed[string(raw)]
	r.parsedMu.RUnlock()
	if q != nil {
		return q, nil
	}
	req, err := ocsp.ParseRequest(raw)
	if err != nil {
		return nil, err
	}
	if req.SerialNumber.BitLen() > maxSerialBits {
		return nil, fmt.Errorf("serial number longer than %d octets", maxSerialBits/8)
	}
	q = requestOf(req)
	if len(raw) > maxCachedRequest {
		return q, nil
	}
	if !r.routable(q) {
		return q, nil // respondTo answers it; nothing is kept
	}
	r.parsedMu.Lock()
	r.parsedBound.put(r.parsed, string(raw), q)
	r.parsedMu.Unlock()
	return q, nil
}

// requestOf keeps what the responder needs of a parsed request.
func requestOf(req *ocsp.Request) *parsedRequest {
	return &parsedRequest{serialNumber: req.SerialNumber, serial: req.SerialNumber.String(), hash: req.HashAlgorithm,
		issuerName: req.IssuerNameHash, issuerKey: req.IssuerKeyHash}
}

// respondTo returns a signed response for the request, from cache if valid.
func (r *Responder) respondTo(q *parsedRequest) (*cachedResponse, error) {
	iss, key, err := r.route(q)
	if err != nil {
		return nil, err
	}
	resp, err := r.lookupAndSign(iss, key, q.serialNumber, q.serial, q.hash, true)
	if err != nil {
		return nil, err
	}
	r.byStatus[statusName(resp.status.code)].Inc()
	return resp, nil
}

// lookupAndSign finds the serial's status and returns the cached response
// for it if it is current, or signs (and caches) a new one. For stepfort's
// own issuer the status is read on every request (from the index, which
// is in memory); a legacy issuer's cached response is served without a
// read while its status is younger than legacyStatusMaxAge.
func (r *Responder) lookupAndSign(iss *ocspIssuer, key *responderKey, serialNumber *big.Int, serial string, hash crypto.Hash, countHit bool) (*cachedResponse, error) {
	ck := cacheKey{iss.id, serial, hash}
	r.mu.RLock()
	cached := r.cache[ck]
	if cached == nil {
		cached = r.unknown[ck]
	}
	r.mu.RUnlock()
	now := r.host.Now()
	if cached != nil && !now.Before(cached.thisUpdate.Add(r.cfg.Validity.Duration/2)) {
		cached = nil // re-signed below
	}
	if iss.status != nil {
		r.refreshChanges(iss, now)
		if cached != nil && legacyFresh(iss, cached) {
			return r.hit(cached, countHit), nil
		}
	}
	seen := iss.changes.Load() // before the status read: a change after it moves the counter past seen
	st, err := r.statusOf(iss, serialNumber, serial)
	if err != nil {
		return nil, err
	}
	if cached != nil && cached.status == st {
		cached.seen.Store(seen)
		return r.hit(cached, countHit), nil
	}
	resp, err := r.sign(iss, key, serialNumber, serial, hash, st)
	if err == nil {
		resp.seen.Store(seen)
	}
	return resp, err
}

func (r *Responder) hit(c *cachedResponse, count bool) *cachedResponse {
	if count {
		r.cacheHit.Inc()
	}
	return c
}

// statusOf reads the serial's status from its issuer: the status index for
// stepfort's own, the legacy store for a legacy issuer.
func (r *Responder) statusOf(iss *ocspIssuer, serialNumber *big.Int, serial string) (certStatus, error) {
	if iss.status != nil {
		return iss.status(serialNumber)
	}
	return r.status(serial)
}

// status returns the serial's status from the index, or from the database
// (teaching the index) when the index cannot answer.
func (r *Responder) status(serial string) (certStatus, error) {
	st, seq, ok := r.idx.lookup(serial)
	if ok {
		return st, nil
	}
	rci, err := storage.Revocation(r.store, serial)
	if err != nil {
		return certStatus{}, err
	}
	switch {
	case rci != nil:
		st = certStatus{code: statusRevoked, rev: fromInfo(rci)}
	default:
		issued, err := storage.Issued(r.store, serial)
		if err != nil {
			return certStatus{}, err
		}
		st = certStatus{code: statusUnknown}
		if issued {
			st.code = statusGood
		}
	}
	r.idx.learn(serial, st, seq)
	return st, nil
}

// sign makes a response and caches it (unknown serials in their own
// cache), within the caches' bounds in entries and bytes.
func (r *Responder) sign(iss *ocspIssuer, key *responderKey, serialNumber *big.Int, serial string, hash crypto.Hash, st certStatus) (*cachedResponse, error) {
	now := r.host.Now()
	next := now.Add(r.cfg.Validity.Duration)
	if key.cert != nil && next.After(key.cert.NotAfter) {
		next = key.cert.NotAfter // a responder certificate cut short by its issuer's end
	}
	tmpl := ocsp.Response{
		SerialNumber: serialNumber,
		ThisUpdate:   now.Add(-time.Minute).Truncate(time.Second), // clock skew
		NextUpdate:   next.Truncate(time.Second),
		IssuerHash:   hash,
		Status:       st.code,  // never "good" for a serial this CA did not issue
		Certificate:  key.cert, // nil when the CA key signs
	}
	if st.code == statusRevoked {
		tmpl.RevokedAt = st.rev.at
		tmpl.RevocationReason = st.rev.reason
	}
	der, err := ocsp.CreateResponse(key.issuer, key.responderCert(), tmpl, key.signer)
	if err != nil {
		return nil, fmt.Errorf("sign OCSP response: %w", err)
	}
	sum := sha256.Sum256(der)
	resp := &cachedResponse{
		der: der, status: st, thisUpdate: tmpl.ThisUpdate, nextUpdate: tmpl.NextUpdate,
		etag:         []string{`"` + hex.EncodeToString(sum[:16]) + `"`},
		lastModified: []string{tmpl.ThisUpdate.UTC().Format(http.TimeFormat)},
		expires:      []string{tmpl.NextUpdate.UTC().Format(http.TimeFormat)},
	}
	resp.seen.Store(-1)
	ck := cacheKey{iss.id, serial, hash}
	r.mu.Lock()
	if iss.key == key { // not replaced by a rotation meanwhile
		if st.code == statusUnknown {
			r.unknownBound.put(r.unknown, ck, resp)
		} else {
			r.unknownBound.remove(r.unknown, ck)
			r.cacheBound.put(r.cache, ck, resp)
		}
	}
	r.mu.Unlock()
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

// Refresh re-signs every cached response of an issued serial older than
// 40% of its validity (unknown ones are signed again when asked). It
// returns how many it re-signed.
func (r *Responder) Refresh() int {
	due := r.host.Now().Add(-r.cfg.Validity.Duration * 2 / 5)
	r.mu.RLock()
	var stale []cacheKey
	for k, v := range r.cache {
		if v.thisUpdate.Before(due) {
			stale = append(stale, k)
		}
	}
	r.mu.RUnlock()
	n := 0
	for _, k := range stale {
		serial, ok := new(big.Int).SetString(k.serial, 10)
		iss := r.issuerByID(k.issuer)
		if !ok || iss == nil {
			continue
		}
		key, err := r.keyFor(iss)
		if err != nil {
			r.log.Error("OCSP refresh", "issuer", iss.name, "error", err)
			continue
		}
		st, err := r.statusOf(iss, serial, k.serial)
		if err != nil {
			r.log.Warn("OCSP refresh", "issuer", iss.name, "serial", k.serial, "error", err)
			continue
		}
		if _, err := r.sign(iss, key, serial, k.serial, k.hash, st); err == nil {
			n++
		}
	}
	return n
}

func statusName(code int) string {
	switch code {
	case statusRevoked:
		return "revoked"
	case statusUnknown:
		return "unknown"
	default:
		return "good"
	}
}

func (r *Responder) writeError(w http.ResponseWriter, body []byte, status string) {
	r.byStatus[status].Inc()
	w.Header()["Content-Type"] = hdrContentType
	w.Header()["Cache-Control"] = hdrNoStore
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

func (k *responderKey) issuedBy(hash crypto.Hash, nameHash, keyHash []byte) bool {
	nh, ok := k.nameHash[hash]
	if !ok {
		return false
	}
	return bytes.Equal(nh, nameHash) && bytes.Equal(k.keyHash[hash], keyHash)
}

// currentSigner returns the signing key of stepfort's own issuer.
func (r *Responder) currentSigner() (*responderKey, error) { return r.keyFor(r.own) }

// keyFor returns the issuer's signing key, issuing a new delegated
// responder certificate when there is none or the current one is past half
// its life (and dropping the issuer's cached responses, which name the
// old responder). A response is never valid longer than its responder
// certificate.
func (r *Responder) keyFor(iss *ocspIssuer) (*responderKey, error) {
	now := r.host.Now()
	r.mu.RLock()
	k := iss.key
	r.mu.RUnlock()
	if k.fresh(now) {
		return k, nil
	}
	// The audit record is written after the lock is released: under
	// failClosed it waits for the database.
	var rec *plugins.AuditRecord
	defer func() {
		if rec != nil {
			r.record(*rec)
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	if k := iss.key; k.fresh(now) {
		return k, nil
	}
	caCert, caSigner, err := r.issuerCA(iss)
	if err != nil {
		return nil, err
	}
	k = &responderKey{issuer: caCert, signer: caSigner}
	if err := k.hashIssuer(); err != nil {
		return nil, err
	}
	if r.cfg.Signer == "delegated" {
		if err := k.delegate(now, r.cfg.ResponderLifetime.Duration, r.fixedKey(iss)); err != nil {
			err = fmt.Errorf("OCSP signer of issuer %s: %w", iss.name, err)
			rec = r.responderFailureLocked(iss, caCert, now, err)
			return nil, err
		}
		r.log.Info("OCSP responder certificate issued", "issuer", iss.name, "serial", k.cert.SerialNumber.String(), "notAfter", k.cert.NotAfter, "kmsKey", r.fixedKey(iss) != nil)
		rec = responderIssued(iss, k.cert)
		delete(r.signerFailed, iss.name)
	}
	iss.key = k
	r.dropCachedLocked(iss.id)
	return k, nil
}

// responderIssued is the audit record of a new delegated responder
// certificate (docs/audit.md: ocsp.responder.issue).
func responderIssued(iss *ocspIssuer, cert *x509.Certificate) *plugins.AuditRecord {
	return &plugins.AuditRecord{Action: "ocsp.responder.issue", Outcome: plugins.AuditSuccess,
		Object: plugins.AuditObject{Serial: cert.SerialNumber.String(), Issuer: cert.Issuer.String(), Subject: cert.Subject.CommonName},
		Details: map[string]string{"issuerName": iss.name, "legacy": strconv.FormatBool(iss.cert != nil),
			"notBefore": cert.NotBefore.UTC().Format(time.RFC3339), "notAfter": cert.NotAfter.UTC().Format(time.RFC3339)}}
}

// responderFailureRecordEvery spaces the failure records of one issuer:
// every OCSP request retries while the signer is broken.
const responderFailureRecordEvery = 10 * time.Minute

// responderFailureLocked is the audit record of a failed responder
// certificate, or nil when one was recorded recently (r.mu held).
func (r *Responder) responderFailureLocked(iss *ocspIssuer, caCert *x509.Certificate, now time.Time, err error) *plugins.AuditRecord {
	if last, ok := r.signerFailed[iss.name]; ok && now.Sub(last) < responderFailureRecordEvery {
		return nil
	}
	if r.signerFailed == nil {
		r.signerFailed = map[string]time.Time{}
	}
	r.signerFailed[iss.name] = now
	return &plugins.AuditRecord{Action: "ocsp.responder.issue", Outcome: plugins.AuditFailure, Reason: err.Error(),
		Object:  plugins.AuditObject{Issuer: caCert.Subject.String()},
		Details: map[string]string{"issuerName": iss.name, "legacy": strconv.FormatBool(iss.cert != nil)}}
}

// record appends a record of the revocation plugin's OCSP responder.
func (r *Responder) record(rec plugins.AuditRecord) {
	a := r.host.Audit()
	if a == nil {
		return
	}
	rec.Actor = plugins.AuditActor{Kind: "system", ID: r.host.Replica(), Name: "revocation"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Record(ctx, rec); err != nil {
		r.log.Error("audit record lost", "action", rec.Action, "error", err)
	}
}

// issuerCA returns the CA certificate and key of iss: the authority's
// intermediate for stepfort's own issuer (it may not exist yet while
// plugins are built), the loaded ones for a legacy issuer.
func (r *Responder) issuerCA(iss *ocspIssuer) (*x509.Certificate, crypto.Signer, error) {
	if iss.cert != nil {
		return iss.cert, iss.caSigner, nil
	}
	auth := r.host.Authority()
	if auth == nil {
		return nil, nil, errors.New("no authority yet to answer OCSP for")
	}
	inters := auth.GetIntermediateCertificates()
	if len(inters) == 0 {
		return nil, nil, errors.New("no intermediate certificate to answer OCSP for")
	}
	caSigner, err := auth.GetX509Signer()
	if err != nil {
		return nil, nil, fmt.Errorf("OCSP signer: %w", err)
	}
	return inters[0], caSigner, nil
}

// dropCachedLocked forgets the issuer's signed responses (r.mu held).
func (r *Responder) dropCachedLocked(id uint32) {
	if r.legacy.Load() == nil { // only stepfort's own issuer: start afresh
		r.cache = map[cacheKey]*cachedResponse{}
		r.cacheBound.reset()
		r.unknown = map[cacheKey]*cachedResponse{}
		r.unknownBound.reset()
		return
	}
	for _, c := range []struct {
		m map[cacheKey]*cachedResponse
		b *byteBound[cacheKey, *cachedResponse]
	}{{r.cache, &r.cacheBound}, {r.unknown, &r.unknownBound}} {
		for k := range c.m {
			if k.issuer == id {
				c.b.remove(c.m, k)
			}
		}
	}
}

// fresh reports whether k can keep signing: the CA key always, a delegated
// certificate until half its life.
func (k *responderKey) fresh(now time.Time) bool {
	return k != nil && (k.cert == nil || now.Before(k.cert.NotBefore.Add(k.cert.NotAfter.Sub(k.cert.NotBefore)/2)))
}

// oidOCSPNoCheck tells clients not to check the responder certificate's own
// revocation (RFC 6960 4.2.2.2.1).
var oidOCSPNoCheck = []int{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

// delegate issues a responder certificate for fixed (a KMS key kept across
// rotations) or, when fixed is nil, for a key made now, and makes it k's
// signer.
func (k *responderKey) delegate(now time.Time, lifetime time.Duration, fixed crypto.Signer) error {
	var key crypto.Signer = fixed
	if key == nil {
		gen, err := newResponderKey()
		if err != nil {
			return err
		}
		key = gen
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return err
	}
	// Never past the issuer's own end: a legacy CA may be near its end.
	notAfter := now.Add(lifetime)
	if notAfter.After(k.issuer.NotAfter) {
		notAfter = k.issuer.NotAfter
	}
	if !notAfter.After(now) {
		return fmt.Errorf("issuer certificate %q expired at %s", k.issuer.Subject.CommonName, k.issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         k.issuer.Subject,
		NotBefore:       now.Add(-time.Minute),
		NotAfter:        notAfter,
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

// orDefault is v, or def when v is not set (a configuration built in code
// rather than decoded over DefaultConfig).
func orDefault[T int | int64](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
