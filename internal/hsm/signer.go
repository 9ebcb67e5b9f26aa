//go:build cgo && !nopkcs11

package hsm

import (
	"crypto"
	"fmt"
	"io"
	"strings"
	"sync"

	"go.step.sm/crypto/kms/apiv1"
	upstream "go.step.sm/crypto/kms/pkcs11"
)

// Signer signs with a key in the token. After a lost session it finds the
// key again in the reopened token, and refuses if the key found there is
// not the one it started with.
type Signer struct {
	c    *conn
	name string
	pub  crypto.PublicKey

	mu    sync.Mutex
	inner crypto.Signer
	gen   uint64
}

// Public returns the key's public half, read when the signer was made.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs digest within SignTimeout or fails with ErrUnavailable.
func (s *Signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return bounded(s.c, "a signature", func() ([]byte, error) {
		var last error
		for range 2 {
			inner, gen, err := s.current()
			if err != nil {
				return nil, err
			}
			sig, err := inner.Sign(rand, digest, opts)
			if err == nil || requestError(err) {
				return sig, err
			}
			last = err
			s.c.lost(gen, err)
		}
		return nil, fmt.Errorf("%w: token %s: signing with %s: %v", ErrUnavailable, s.c.t, objectName(s.name), last)
	})
}

// current returns the signer for the context's current generation,
// finding the key again after a reopen.
func (s *Signer) current() (crypto.Signer, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, gen, err := s.c.get()
	if err != nil {
		return nil, 0, err
	}
	if s.inner != nil && s.gen == gen {
		return s.inner, gen, nil
	}
	inner, err := p.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: s.name})
	if err != nil {
		return nil, 0, keyError(s.c.t, s.name, err)
	}
	if !samePublic(inner.Public(), s.pub) {
		return nil, 0, fmt.Errorf("pkcs11: key %s in token %s is not the key this CA started with: refusing to sign", objectName(s.name), s.c.t)
	}
	s.inner, s.gen = inner, gen
	return inner, gen, nil
}

// find looks the key up for CreateSigner.
func (s *Signer) find() (crypto.Signer, uint64, error) {
	type found struct {
		s   crypto.Signer
		gen uint64
	}
	f, err := bounded(s.c, "finding a key", func() (found, error) {
		var gen uint64
		sig, err := retry(s.c, func(p *upstream.PKCS11) (crypto.Signer, error) {
			gen = s.c.generation()
			sig, err := p.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: s.name})
			if err != nil {
				return nil, keyError(s.c.t, s.name, err)
			}
			return sig, nil
		})
		return found{sig, gen}, err
	})
	return f.s, f.gen, err
}

func (c *conn) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func samePublic(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// objectName is the key part of a key URI, for messages (never the PIN).
func objectName(name string) string {
	s, _, _ := strings.Cut(name, "?")
	return s
}
