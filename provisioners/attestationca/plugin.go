// Package attestationca is stepfort's TPM Attestation CA: a plugin that
// speaks the Smallstep Attestation CA protocol (POST {base}/attest, then
// POST {base}/secret) used by go.step.sm/crypto/tpm/attestation.Client and
// the step CLI's --attestation-ca-url. It activates a credential against the
// TPM's endorsement key (EK), and only for EKs registered and active in the
// device inventory issues an AK certificate from its own CA, separate from
// the issuing CA. See docs/attestation.md.
package attestationca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"go.step.sm/crypto/pemutil"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "attestationCA"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return defaultConfig() },
		New:       func(c plugins.Config) (plugins.Plugin, error) { return New(c.(*Config)) },
	})
}

// Plugin is the Attestation CA.
type Plugin struct {
	cfg     *Config
	issuer  *issuer
	ekRoots *x509.CertPool

	state  atomic.Pointer[state] // nil until Start
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type state struct {
	sessions  *SessionStore
	inventory *inventory.Store
	log       *slog.Logger
	now       func() time.Time
}

// New loads the Attestation CA key pair and the EK roots, so a bad path or
// password fails at start-up rather than at the first device.
func New(cfg *Config) (*Plugin, error) {
	chain, err := pemutil.ReadCertificateBundle(cfg.Certificate)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	key, err := pemutil.Read(cfg.Key, pemutil.WithPasswordFile(cfg.PasswordFile))
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key: %s is not a signing key", cfg.Key)
	}
	if !publicKeyEqual(signer.Public(), chain[0].PublicKey) {
		return nil, fmt.Errorf("key: %s does not match certificate %s", cfg.Key, cfg.Certificate)
	}
	if !chain[0].IsCA {
		return nil, fmt.Errorf("certificate: %s is not a CA certificate", cfg.Certificate)
	}
	if cfg.Root != "" {
		roots, err := pemutil.ReadCertificateBundle(cfg.Root)
		if err != nil {
			return nil, fmt.Errorf("root: %w", err)
		}
		pool := x509.NewCertPool()
		for _, r := range roots {
			pool.AddCert(r)
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("certificate: %s does not chain to root %s: %w", cfg.Certificate, cfg.Root, err)
		}
	}
	p := &Plugin{cfg: cfg, issuer: &issuer{chain: chain, signer: signer}}
	if len(cfg.EKRoots) > 0 {
		p.ekRoots = x509.NewCertPool()
		for _, f := range cfg.EKRoots {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("ekRoots: %w", err)
			}
			if !p.ekRoots.AppendCertsFromPEM(b) {
				return nil, fmt.Errorf("ekRoots: %s holds no PEM certificate", f)
			}
		}
	}
	return p, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// Start opens the session table and the inventory, and purges expired
// sessions in the background.
func (p *Plugin) Start(ctx context.Context, h plugins.Host) error {
	if h.DB() == nil {
		return errors.New("the Attestation CA needs a database (sessions and inventory)")
	}
	sessions, err := NewSessionStore(h.DB())
	if err != nil {
		return err
	}
	inv, err := inventory.NewStore(h.DB(), h.Now)
	if err != nil {
		return err
	}
	st := &state{sessions: sessions, inventory: inv, log: h.Logger(), now: h.Now}
	p.state.Store(st)
	ctx, p.cancel = context.WithCancel(ctx)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		every := min(p.cfg.SessionTTL.Duration, time.Minute)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := sessions.Purge(st.now(), p.cfg.SessionTTL.Duration); err != nil {
					st.log.Warn("purge attestation sessions", "error", err)
				}
			}
		}
	}()
	return nil
}

// Stop ends the purge loop.
func (p *Plugin) Stop(context.Context) error {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	return nil
}

// Routes implements plugins.RouteProvider.
func (p *Plugin) Routes(r chi.Router) {
	r.Post(p.cfg.BasePath+"/attest", serveStep(p, "attest", p.attest))
	r.Post(p.cfg.BasePath+"/secret", serveStep(p, "secret", p.secret))
}
