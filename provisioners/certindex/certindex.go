// Package certindex is the certificate index: every certificate the CA
// issues, whatever the flow, indexed from the durable certificate events
// with its names, provisioner, dates, status, Endpoint, device and issuer,
// and the admin API and CLI that query, export and revoke by filter
// (docs/certificates.md has the design record).
//
// The plugin observes certificate events (at least once, in any order
// across replicas): each event becomes a Record merged into the stored one,
// so redelivery and reordering converge. Reindex builds the same records
// from upstream's tables, so a database written by step-ca gets a full
// index.
package certindex

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "certIndex"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return DefaultConfig() },
		New:       plugins.Constructor(New),
	})
}

// Config is the plugin's ca.json block.
type Config struct {
	// RevokeBatch is the most certificates one revoke-by-filter request
	// revokes (default 1000); the CLI repeats the request until none is
	// left, so one request never holds the server for long.
	RevokeBatch int `json:"revokeBatch"`
	// ParentWait is how long a renewal whose parent is not indexed yet is
	// retried before it is indexed with its parent's Endpoint computed as
	// if the parent were a /sign certificate (default 1m).
	ParentWait config.Duration `json:"parentWait"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() *Config {
	return &Config{RevokeBatch: 1000, ParentWait: config.Duration{Duration: time.Minute}}
}

// Validate checks the values.
func (c *Config) Validate() error {
	if c.RevokeBatch < 1 || c.RevokeBatch > 10000 {
		return config.Errorf("revokeBatch", "must be from 1 to 10000, got %d", c.RevokeBatch)
	}
	if d := c.ParentWait.Duration; d < 0 || d > 24*time.Hour {
		return config.Errorf("parentWait", "must be between 0 and 24h, got %s", d)
	}
	return nil
}

// Plugin is the certIndex plugin; complete when New returns.
type Plugin struct {
	cfg   *Config
	host  plugins.Host
	store Store
	group grouping
}

// New opens (creating) the index on the host's database. On bbolt it loads
// the in-memory query index, a scan of the table.
func New(cfg *Config, host plugins.Host) (*Plugin, error) {
	store, err := Open(host.DB(), host.Backend())
	if err != nil {
		return nil, err
	}
	return &Plugin{cfg: cfg, host: host, store: store, group: authorityGrouping(host.Authority)}, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// Store returns the index, for tools and tests.
func (p *Plugin) Store() Store { return p.store }

// ObserveCertificate indexes the event (idempotently, in any order).
func (p *Plugin) ObserveCertificate(ctx context.Context, ev plugins.CertificateEvent) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rec, err := p.fromEvent(ev)
	if err == nil {
		err = p.store.Put([]*Record{rec})
	}
	if err != nil {
		return fmt.Errorf("certIndex: %s %s: %w", ev.Kind, ev.Serial, err)
	}
	return nil
}

// fromEvent builds the record an event describes.
func (p *Plugin) fromEvent(ev plugins.CertificateEvent) (*Record, error) {
	var cert *x509.Certificate
	if len(ev.CertificateDER) > 0 {
		c, err := x509.ParseCertificate(ev.CertificateDER)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		cert = c
	} else if c, err := storedCertificate(p.host.DB(), ev.Serial); err != nil {
		return nil, err
	} else {
		cert = c // nil: a revocation of a certificate this CA does not hold
	}
	rec, err := stub(ev.Serial)
	if err != nil {
		return nil, err
	}
	if cert != nil {
		rec = fromCertificate(cert)
	}
	if ev.Provisioner != nil {
		rec.Provisioner = *ev.Provisioner
	}
	rec.Device = ev.PermanentIdentifier
	rec.ParentSerial = ev.ParentSerial
	if ev.Kind == plugins.EventRevoked && ev.Revocation != nil {
		rec.Revocation = &Revocation{ReasonCode: ev.Revocation.ReasonCode, Reason: ev.Revocation.Reason, RevokedAt: ev.Revocation.RevokedAt.UTC()}
	}
	// AK certificates are no subscriber's: billing counts no Endpoint for
	// them, and their provisioner is not upstream's (no claims to read).
	if cert != nil && ev.Kind != plugins.EventRevoked && rec.Provisioner.Type != plugins.ProvisionerTypeAttestationCA {
		if rec.Endpoint, err = p.endpoint(ev, cert); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

// endpoint applies billing's rule: a renewal joins its parent's Endpoint,
// anything else starts one or joins its subject's.
func (p *Plugin) endpoint(ev plugins.CertificateEvent, cert *x509.Certificate) (string, error) {
	if ev.ParentSerial == "" {
		return signEndpoint(p.group, cert, provisionerOf(ev))
	}
	parent, err := p.store.Get(ev.ParentSerial)
	if err != nil {
		return "", err
	}
	if parent != nil && parent.Endpoint != "" {
		return parent.Endpoint, nil
	}
	if p.host.Now().Sub(ev.OccurredAt) < p.cfg.ParentWait.Duration {
		// Another replica may still be delivering the parent's event.
		return "", fmt.Errorf("parent %s not indexed yet", ev.ParentSerial)
	}
	// billing treats a parent it never recorded as a /sign certificate.
	pc, err := storedCertificate(p.host.DB(), ev.ParentSerial)
	if err != nil || pc == nil {
		return lineageEndpointID(ev.ParentSerial), err
	}
	return signEndpoint(p.group, pc, provisionerOf(ev))
}

func provisionerOf(ev plugins.CertificateEvent) plugins.ProvisionerRef {
	if ev.Provisioner == nil {
		return plugins.ProvisionerRef{}
	}
	return *ev.Provisioner
}

// stub is the record of a serial known only from a revocation.
func stub(serial string) (*Record, error) {
	n, ok := new(big.Int).SetString(serial, 10)
	if !ok || n.Sign() < 0 {
		return nil, fmt.Errorf("serial %q is not a decimal number", serial)
	}
	return &Record{Serial: n.String(), SerialHex: serialHex(n)}, nil
}

// storedCertificate reads a certificate from upstream's table; nil when
// absent.
func storedCertificate(db nosql.DB, serial string) (*x509.Certificate, error) {
	vals, err := storage.GetMany(db, storage.CertsTable, [][]byte{[]byte(serial)})
	if err != nil {
		return nil, fmt.Errorf("read certificate %s: %w", serial, err)
	}
	if vals[0] == nil {
		return nil, nil
	}
	c, err := x509.ParseCertificate(vals[0])
	if err != nil {
		return nil, fmt.Errorf("parse stored certificate %s: %w", serial, err)
	}
	return c, nil
}
