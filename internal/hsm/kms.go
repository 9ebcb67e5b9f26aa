//go:build cgo && !nopkcs11

package hsm

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/kms/apiv1"
	upstream "go.step.sm/crypto/kms/pkcs11"
	"go.step.sm/crypto/kms/uri"
)

// Defaults of the recovery layer; tests and bench programs may lower them
// before opening a KMS.
var (
	// SignTimeout bounds one signature, including a reopen of the token.
	SignTimeout = 5 * time.Second
	// RetryInterval is how long a token that failed to reopen is left
	// alone: signatures fail at once meanwhile.
	RetryInterval = time.Second
	// MaxInFlight bounds the signatures waiting on the module; past it
	// (a module that hangs) new ones fail at once.
	MaxInFlight int32 = 256
)

func init() {
	apiv1.Register(apiv1.PKCS11, func(ctx context.Context, opts apiv1.Options) (apiv1.KeyManager, error) {
		return Open(ctx, opts)
	})
}

// target is the token a kms URI selects, for messages and for sharing one
// PKCS#11 context per token.
type target struct {
	module string
	field  string // token, serial or slot-id
	value  string
}

func (t target) String() string { return fmt.Sprintf("%s=%q", t.field, t.value) }

func parseTarget(rawuri string) (target, *uri.URI, error) {
	u, err := uri.ParseWithScheme(upstream.Scheme, rawuri)
	if err != nil {
		return target{}, nil, fmt.Errorf("pkcs11: kms uri: %w", err)
	}
	t := target{module: u.Get("module-path")}
	if t.module == "" {
		t.module = "p11-kit-proxy.so" // upstream's default
	}
	for _, f := range []string{"token", "serial", "slot-id"} {
		if v := u.Get(f); v != "" {
			t.field, t.value = f, v
			break
		}
	}
	if t.field == "" {
		return target{}, nil, errors.New("pkcs11: kms uri needs token=, serial= or slot-id= to select the token")
	}
	return t, u, nil
}

// precheck catches what crypto11 reports vaguely or not at all: a module
// file that is not there and a pin-source that cannot be read (upstream
// then logs in with an empty PIN).
func precheck(t target, u *uri.URI) error {
	if strings.Contains(t.module, "/") {
		if _, err := os.Stat(t.module); err != nil {
			return fmt.Errorf("pkcs11: module-path %s: %w", t.module, err)
		}
	}
	if p := u.Get("pin-source"); p != "" {
		b, err := os.ReadFile(strings.TrimPrefix(p, "file://"))
		if err != nil {
			return fmt.Errorf("pkcs11: pin-source: %w", err)
		}
		if strings.TrimSpace(string(b)) == "" {
			return fmt.Errorf("pkcs11: pin-source %s is empty", p)
		}
	}
	return nil
}

// pinOf is the PIN a kms URI (or the options) give, as upstream reads it.
func pinOf(u *uri.URI, opts apiv1.Options) string {
	if p := u.Pin(); p != "" {
		return p
	}
	return opts.Pin
}

// conn is one PKCS#11 context on a token, shared by every KMS of the
// process that names the same module and token. p11 is nil while the
// token is lost.
type conn struct {
	key  string
	t    target
	uri  *uri.URI
	opts apiv1.Options
	refs int // under registryMu

	mu      sync.Mutex
	p11     *upstream.PKCS11
	gen     uint64 // incremented on every (re)open
	closing *upstream.PKCS11
	lastErr error
	retryAt time.Time

	reopening sync.Mutex
	inFlight  atomic.Int32
}

var (
	registryMu sync.Mutex
	registry   = map[string]*conn{}
)

// Open opens (or shares) the token named by opts.URI. Errors name the
// module, token or PIN problem.
func Open(ctx context.Context, opts apiv1.Options) (*KMS, error) {
	t, u, err := parseTarget(opts.URI)
	if err != nil {
		return nil, err
	}
	if err := precheck(t, u); err != nil {
		return nil, err
	}
	key := t.module + "\x00" + t.field + "\x00" + t.value
	registryMu.Lock()
	defer registryMu.Unlock()
	if c, ok := registry[key]; ok {
		// The token is logged in already; a second login would not
		// check this PIN, so compare it with the one that worked.
		if pinOf(u, opts) != pinOf(c.uri, c.opts) {
			return nil, fmt.Errorf("pkcs11: wrong PIN for token %s (not the PIN this process logged in to it with)", t)
		}
		c.refs++
		return &KMS{c: c}, nil
	}
	p, err := upstream.New(ctx, opts)
	if err != nil {
		return nil, openError(t, err)
	}
	c := &conn{key: key, t: t, uri: u, opts: opts, p11: p, gen: 1, refs: 1}
	registry[key] = c
	return &KMS{c: c}, nil
}

// get returns the open context, reopening the token if it was lost. While
// another goroutine reopens, or within RetryInterval of a failed reopen,
// it fails at once.
func (c *conn) get() (*upstream.PKCS11, uint64, error) {
	c.mu.Lock()
	if c.p11 != nil {
		p, g := c.p11, c.gen
		c.mu.Unlock()
		return p, g, nil
	}
	wait := time.Now().Before(c.retryAt)
	last := c.lastErr
	c.mu.Unlock()
	if wait || !c.reopening.TryLock() {
		return nil, 0, c.unavailable(last)
	}
	defer c.reopening.Unlock()
	c.mu.Lock()
	old := c.closing
	c.closing = nil
	c.mu.Unlock()
	if old != nil {
		// Finalizes the module when this was its last context, so
		// the reopen starts from C_Initialize.
		_ = old.Close()
	}
	p, err := upstream.New(context.Background(), c.opts)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.lastErr = openError(c.t, err)
		c.retryAt = time.Now().Add(RetryInterval)
		slog.Warn("PKCS#11 token still unavailable", "token", c.t.String(), "error", c.lastErr)
		return nil, 0, c.unavailable(c.lastErr)
	}
	c.p11, c.lastErr = p, nil
	c.gen++
	slog.Info("PKCS#11 token reopened", "token", c.t.String(), "generation", c.gen)
	return p, c.gen, nil
}

// lost drops the context of generation gen after err; the next get
// reopens the token.
func (c *conn) lost(gen uint64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.p11 == nil {
		return
	}
	slog.Warn("PKCS#11 session lost; reopening the token", "token", c.t.String(), "error", err)
	c.closing, c.p11 = c.p11, nil
	c.lastErr = err
	c.retryAt = time.Time{}
}

func (c *conn) unavailable(cause error) error {
	if cause == nil {
		return fmt.Errorf("%w: token %s is being reopened", ErrUnavailable, c.t)
	}
	return fmt.Errorf("%w: token %s: %v", ErrUnavailable, c.t, cause)
}

// bounded runs f, giving up after SignTimeout. A PKCS#11 call cannot be
// cancelled, so f keeps running; MaxInFlight bounds how many do.
func bounded[T any](c *conn, what string, f func() (T, error)) (T, error) {
	var zero T
	if c.inFlight.Add(1) > MaxInFlight {
		c.inFlight.Add(-1)
		return zero, fmt.Errorf("%w: token %s: %d operations are waiting on the module", ErrUnavailable, c.t, MaxInFlight)
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer c.inFlight.Add(-1)
		v, err := f()
		ch <- result{v, err}
	}()
	timer := time.NewTimer(SignTimeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-timer.C:
		return zero, fmt.Errorf("%w: token %s: %s did not finish within %s", ErrUnavailable, c.t, what, SignTimeout)
	}
}

// KMS is apiv1.KeyManager over a shared, self-healing PKCS#11 context.
type KMS struct {
	c      *conn
	closed sync.Once
}

// GetPublicKey returns the public key of the key named by req.Name.
func (k *KMS) GetPublicKey(req *apiv1.GetPublicKeyRequest) (crypto.PublicKey, error) {
	return bounded(k.c, "reading a public key", func() (crypto.PublicKey, error) {
		return retry(k.c, func(p *upstream.PKCS11) (crypto.PublicKey, error) {
			pub, err := p.GetPublicKey(req)
			if err != nil {
				return nil, keyError(k.c.t, req.Name, err)
			}
			return pub, nil
		})
	})
}

// CreateKey makes a key pair in the token; the private key is sensitive
// and not extractable unless req.Extractable.
func (k *KMS) CreateKey(req *apiv1.CreateKeyRequest) (*apiv1.CreateKeyResponse, error) {
	p, _, err := k.c.get()
	if err != nil {
		return nil, err
	}
	resp, err := p.CreateKey(req)
	if err != nil {
		return nil, keyError(k.c.t, req.Name, err)
	}
	return resp, nil
}

// CreateSigner returns a signer for the key named by req.SigningKey that
// survives a lost session. The key must exist now.
func (k *KMS) CreateSigner(req *apiv1.CreateSignerRequest) (crypto.Signer, error) {
	s := &Signer{c: k.c, name: req.SigningKey}
	inner, gen, err := s.find()
	if err != nil {
		return nil, err
	}
	s.inner, s.gen, s.pub = inner, gen, inner.Public()
	return s, nil
}

// CreateDecrypter returns upstream's decrypter (RSA keys only); it does
// not reopen a lost token by itself.
func (k *KMS) CreateDecrypter(req *apiv1.CreateDecrypterRequest) (crypto.Decrypter, error) {
	p, _, err := k.c.get()
	if err != nil {
		return nil, err
	}
	d, err := p.CreateDecrypter(req)
	if err != nil {
		return nil, keyError(k.c.t, req.DecryptionKey, err)
	}
	return d, nil
}

// LoadCertificate reads a certificate object from the token.
func (k *KMS) LoadCertificate(req *apiv1.LoadCertificateRequest) (*x509.Certificate, error) {
	p, _, err := k.c.get()
	if err != nil {
		return nil, err
	}
	return p.LoadCertificate(req)
}

// StoreCertificate writes a certificate object into the token.
func (k *KMS) StoreCertificate(req *apiv1.StoreCertificateRequest) error {
	p, _, err := k.c.get()
	if err != nil {
		return err
	}
	return p.StoreCertificate(req)
}

// Close releases this KMS; the context closes with the last one.
func (k *KMS) Close() error {
	var err error
	k.closed.Do(func() {
		registryMu.Lock()
		defer registryMu.Unlock()
		if k.c.refs--; k.c.refs > 0 {
			return
		}
		delete(registry, k.c.key)
		k.c.mu.Lock()
		p, old := k.c.p11, k.c.closing
		k.c.p11, k.c.closing = nil, nil
		k.c.mu.Unlock()
		for _, x := range []*upstream.PKCS11{p, old} {
			if x != nil {
				if e := x.Close(); e != nil && err == nil {
					err = e
				}
			}
		}
	})
	return err
}

// retry runs f on the open context, and once more after reopening the
// token if f failed for a reason other than the request itself.
func retry[T any](c *conn, f func(*upstream.PKCS11) (T, error)) (T, error) {
	var zero T
	var last error
	for range 2 {
		p, gen, err := c.get()
		if err != nil {
			return zero, err
		}
		v, err := f(p)
		if err == nil || requestError(err) || missingKey(err) {
			return v, err
		}
		last = err
		c.lost(gen, err)
	}
	return zero, fmt.Errorf("%w: token %s: %v", ErrUnavailable, c.t, last)
}

func missingKey(err error) bool { return strings.Contains(err.Error(), "pkcs11: no key ") }

var (
	_ apiv1.KeyManager         = (*KMS)(nil)
	_ apiv1.CertificateManager = (*KMS)(nil)
	_ apiv1.Decrypter          = (*KMS)(nil)
)
