package ha

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/stepfort/stepfort/internal/crlchanges"
)

// LegacySource is what a legacy issuer's series reads: its imported
// revoked certificates and its state (legacy.Store for one issuer).
type LegacySource interface {
	// ForEachRevoked calls fn for every revoked certificate of the issuer.
	ForEachRevoked(fn func(serialDec []byte, revokedAt time.Time, reason int, notAfter time.Time) error) error
	// State returns the import version (a change makes a new base due)
	// and the CRL number floor (the old CA's last number).
	State() (version, floor int64, err error)
}

// legacySeries is a legacy issuer's series and where its CRLs are served.
type legacySeries struct {
	*series
	basePath, deltaPath string // decoded URL paths; deltaPath "" without deltas
	// lastCheck and lastDirty throttle the change log reads that tell
	// whether a revocation came in (only the Run goroutine touches them).
	lastCheck time.Time
	lastDirty time.Time
}

type legacySource struct{ LegacySource }

func (l legacySource) forEachRevoked(fn func([]byte, time.Time, int, time.Time) error) error {
	return l.ForEachRevoked(fn)
}
func (l legacySource) state() (int64, int64, error) { return l.State() }

// LegacySeriesName is the series (and internal/crlchanges) name of a
// legacy issuer: "legacy/<name>", as legacy.Issuer.Series.
func LegacySeriesName(name string) string { return "legacy/" + name }

// AddLegacySeries makes the publisher publish the CRLs of a legacy
// issuer named name (see LegacySeriesName), signed by signer for cert, in
// scope, from src, and serve them at the paths of scope's URLs. It must be
// called before Run.
func (p *Publisher) AddLegacySeries(name string, cert *x509.Certificate, signer crypto.Signer, scope *CRLScope, src LegacySource) error {
	if cert == nil || signer == nil || scope == nil || src == nil {
		return errors.New("legacy CRL series: certificate, signer, scope and source are required")
	}
	sname := LegacySeriesName(name)
	for _, l := range p.legacy {
		if l.name == sname {
			return fmt.Errorf("legacy issuer %q added twice", name)
		}
	}
	basePath, err := urlPath(scope.url)
	if err != nil {
		return fmt.Errorf("legacy issuer %q: crlURL: %w", name, err)
	}
	var deltaPath string
	if scope.delta != nil {
		if deltaPath, err = urlPath(scope.delta.URL); err != nil {
			return fmt.Errorf("legacy issuer %q: deltaCRLURL: %w", name, err)
		}
	}
	delta, counter := seriesSlots(p, sname)
	l := &legacySeries{basePath: basePath, deltaPath: deltaPath}
	l.series = &series{
		name:       sname,
		base:       newCRLSlot(p.store, crlStateTable, []byte(sname+"/base"), []byte(sname+"/base/published")),
		delta:      delta,
		counterKey: counter,
		scope:      func() *CRLScope { return scope },
		issuer:     func() (*x509.Certificate, crypto.Signer, error) { return cert, signer, nil },
		source:     legacySource{src},
	}
	l.series.dirtySince = l.dirtySince(p)
	p.legacy = append(p.legacy, l)
	p.rebuildRoutes()
	return nil
}

// dirtySince reads the series' change log (at most every half
// publishDelay) for an entry recorded at or after t: legacy revocations
// are recorded there by legacy.Store.Revoke.
func (l *legacySeries) dirtySince(p *Publisher) func(time.Time) (bool, error) {
	return func(t time.Time) (bool, error) {
		now := time.Now()
		if now.Sub(l.lastCheck) >= p.delay/2 {
			latest, _, err := crlchanges.List(p.store, l.name)
			if err != nil {
				return false, err
			}
			l.lastCheck, l.lastDirty = now, time.Time{}
			for _, c := range latest {
				if c.RecordedAt.After(l.lastDirty) {
					l.lastDirty = c.RecordedAt
				}
			}
		}
		return !l.lastDirty.IsZero() && !l.lastDirty.Before(t), nil
	}
}

// urlPath is the decoded path of an absolute URL (what r.URL.Path holds
// for a request to it).
func urlPath(u string) (string, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return "", err
	}
	if pu.Path == "" || pu.Path == "/" {
		return "", fmt.Errorf("%q has no path to serve the CRL at", u)
	}
	return pu.Path, nil
}

// rebuildRoutes maps the decoded paths of the active own scope's delta
// (and its base when that is not /crl or /1.0/crl) and of every legacy
// series' CRLs to their handlers.
func (p *Publisher) rebuildRoutes() {
	m := map[string]http.Handler{}
	if sc := p.scope.Load(); sc != nil {
		if path, err := urlPath(sc.url); err == nil && path != "/crl" && path != "/1.0/crl" {
			m[path] = http.HandlerFunc(p.ServeCRL)
		}
		if sc.delta != nil {
			if path, err := urlPath(sc.delta.URL); err == nil {
				m[path] = p.slotHandler(p.own.delta, "delta", true)
			}
		}
	}
	for _, l := range p.legacy {
		m[l.basePath] = p.slotHandler(l.base, "crl", false)
		if l.deltaPath != "" {
			m[l.deltaPath] = p.slotHandler(l.delta, "delta", false)
		}
	}
	p.routes.Store(&m)
}

// slotHandler serves slot; own: only while a scope with deltas is active.
func (p *Publisher) slotHandler(slot *crlSlot, file string, own bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if own {
			if sc := p.scope.Load(); sc == nil || sc.delta == nil {
				http.Error(w, "delta CRLs are not enabled", http.StatusNotFound)
				return
			}
		}
		p.serveSlot(w, r, slot, file)
	})
}

// Route returns the handler of the CRL served at the decoded path, nil
// if none. It is cheap: a map lookup.
func (p *Publisher) Route(path string) http.Handler {
	return (*p.routes.Load())[path]
}

// ServeDelta answers with the own series' delta CRL.
func (p *Publisher) ServeDelta(w http.ResponseWriter, r *http.Request) {
	p.slotHandler(p.own.delta, "delta", true).ServeHTTP(w, r)
}
