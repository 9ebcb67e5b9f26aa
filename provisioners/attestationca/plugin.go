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
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/nosql"
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
		New:       plugins.Constructor(New),
	})
}

// Plugin is the Attestation CA. It is complete when New returns: every
// field is set once there and never changed, so requests read them without
// locks.
type Plugin struct {
	cfg       *Config
	issuer    *issuer
	ekRoots   *x509.CertPool // nil: EK certificates are not verified
	sessions  *SessionStore
	global    *globalLimiter
	inventory *inventory.Store
	audit     plugins.Auditor
	db        nosql.DB
	events    plugins.EventRecorder
	certs     plugins.CertificateEventRecorder // Host.Events(): AK certificate events
	log       *slog.Logger
	now       func() time.Time
}

// New loads the Attestation CA key pair and the EK roots and opens the
// session and inventory tables, so a bad path, password or missing
// database fails the daemon's start rather than the first device. Expired
// sessions are purged in the host's goroutine group.
func New(cfg *Config, host plugins.Host) (*Plugin, error) {
	is, err := loadIssuer(cfg)
	if err != nil {
		return nil, err
	}
	ekRoots, err := loadEKRoots(cfg.EKRoots)
	if err != nil {
		return nil, err
	}
	if host.DB() == nil {
		return nil, errors.New("the Attestation CA needs a database (sessions and inventory)")
	}
	certs, ok := host.Events().(plugins.CertificateEventRecorder)
	if !ok {
		// Fail closed: an AK certificate must never leave without its event.
		return nil, errors.New("the Attestation CA needs a host that records certificate events (plugins.CertificateEventRecorder)")
	}
	sessions, err := NewSessionStore(host.DB())
	if err != nil {
		return nil, err
	}
	inv, err := inventory.NewStore(host.DB(), host.Now)
	if err != nil {
		return nil, err
	}
	sessions.SetEKLimit(EKLimit{Burst: cfg.RateLimit.PerEK.Burst, Interval: cfg.RateLimit.PerEK.Interval.Duration})
	p := &Plugin{cfg: cfg, issuer: is, ekRoots: ekRoots, sessions: sessions, inventory: inv, audit: host.Audit(), log: host.Logger(), now: host.Now,
		db: host.DB(), events: host.Events(), certs: certs,
		global: newGlobalLimiter(cfg.RateLimit.Global.PerSecond, cfg.RateLimit.Global.Burst)}
	host.Go("attestation session purge", p.purgeLoop)
	return p, nil
}

// loadIssuer reads the intermediate chain and its key, and checks they
// match, that the intermediate is a CA and that it chains to root.
func loadIssuer(cfg *Config) (*issuer, error) {
	chain, err := pemutil.ReadCertificateBundle(cfg.Certificate)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	signer, err := loadKey(cfg)
	if err != nil {
		return nil, err
	}
	if !publicKeyEqual(signer.Public(), chain[0].PublicKey) {
		return nil, fmt.Errorf("key: %s does not match certificate %s", cfg.Key, cfg.Certificate)
	}
	if !chain[0].IsCA {
		return nil, fmt.Errorf("certificate: %s is not a CA certificate", cfg.Certificate)
	}
	if cfg.Root != "" {
		if err := verifyChain(chain, cfg.Root); err != nil {
			return nil, fmt.Errorf("certificate: %s does not chain to root %s: %w", cfg.Certificate, cfg.Root, err)
		}
	}
	return &issuer{chain: chain, signer: signer}, nil
}

// verifyChain checks chain[0] against the roots in rootFile, with the rest
// of chain as intermediates.
func verifyChain(chain []*x509.Certificate, rootFile string) error {
	roots, err := pemutil.ReadCertificateBundle(rootFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err = chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

// loadEKRoots reads the manufacturer trust anchors; nil when none are
// configured.
func loadEKRoots(files []string) (*x509.CertPool, error) {
	if len(files) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("ekRoots: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("ekRoots: %s holds no PEM certificate", f)
		}
	}
	return pool, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// purgeLoop deletes sessions one TTL after they expired, until ctx ends.
// Every replica runs it: deleting is idempotent, so no lease is needed.
func (p *Plugin) purgeLoop(ctx context.Context) {
	t := time.NewTicker(min(p.cfg.SessionTTL.Duration, time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := p.sessions.purge(ctx, p.now(), p.cfg.SessionTTL.Duration); err != nil {
				p.log.Warn("purge attestation sessions", "error", err)
			}
		}
	}
}

// Routes implements plugins.RouteProvider.
func (p *Plugin) Routes(r chi.Router) {
	r.Post(p.cfg.BasePath+"/attest", serveStep(p, "attest", p.attest))
	r.Post(p.cfg.BasePath+"/secret", serveStep(p, "secret", p.secret))
}
