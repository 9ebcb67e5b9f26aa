package dynamicscep

import (
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/admin"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Scopes of the admin routes.
const (
	ScopeRead  = "scep:read"
	ScopeWrite = "scep:write"
)

// Limits of a challenge request.
const (
	maxNames     = 100  // names bound per list
	maxNameLen   = 253  // a DNS name, an e-mail address
	maxURILen    = 1024 // a URI
	maxCNLen     = 64   // X.509 ub-common-name
	maxDeviceLen = 128
)

// AdminRoutes implements plugins.AdminRouteProvider. The daemon
// authenticates, checks the scope and bounds the body
// (plugins.DefaultMaxBody) before a handler runs.
func (p *Plugin) AdminRoutes() []plugins.AdminRoute {
	return []plugins.AdminRoute{
		{Method: http.MethodPost, Pattern: "/scep/challenges", Scope: ScopeWrite, Handler: p.createChallenge},
		{Method: http.MethodGet, Pattern: "/scep/challenges", Scope: ScopeRead, Handler: p.listChallenges},
		{Method: http.MethodDelete, Pattern: "/scep/challenges/{id}", Scope: ScopeWrite, Handler: p.withdrawChallenge},
	}
}

// CreateRequest is the body of POST /api/v1/scep/challenges.
type CreateRequest struct {
	Provisioner string `json:"provisioner,omitempty"`
	TTL         string `json:"ttl,omitempty"`
	Bindings
}

// ChallengeView is a challenge as the API shows it. Challenge is set only
// in the answer that created it.
type ChallengeView struct {
	ID          string    `json:"id"`
	Challenge   string    `json:"challenge,omitempty"`
	Provisioner string    `json:"provisioner"`
	Source      string    `json:"source"`
	ExpiresAt   time.Time `json:"expiresAt"`
	CreatedAt   time.Time `json:"createdAt"`
	CreatedBy   string    `json:"createdBy,omitempty"`
	Bindings
	State         string     `json:"state,omitempty"`
	ConsumedAt    *time.Time `json:"consumedAt,omitempty"`
	TransactionID string     `json:"transactionID,omitempty"`
}

func view(c *Challenge, now time.Time) ChallengeView {
	return ChallengeView{ID: c.ID, Provisioner: c.Provisioner, Source: c.Source, ExpiresAt: c.ExpiresAt, CreatedAt: c.CreatedAt,
		CreatedBy: c.CreatedBy, Bindings: c.Bindings, State: c.StateAt(now), ConsumedAt: c.ConsumedAt, TransactionID: c.TransactionID}
}

func (p *Plugin) createChallenge(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if !admin.ReadJSON(w, r, &req) {
		return
	}
	c, err := p.buildChallenge(&req)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if c.Device != "" {
		if err := p.checkNewDevice(c.Device); err != nil {
			if errors.Is(err, errBadDevice) {
				admin.WriteError(w, http.StatusBadRequest, "%v", err)
			} else {
				p.log.Error("SCEP challenge: inventory lookup failed", "error", err)
				admin.WriteError(w, http.StatusServiceUnavailable, "inventory unavailable")
			}
			return
		}
	}
	if t := admin.TokenFrom(r); t != nil {
		c.CreatedBy = fmt.Sprintf("token:%s (%s)", t.ID, t.Name)
	}
	secret, err := p.challenges.Create(c)
	if err != nil {
		p.metrics.count(c.Source, ResultError)
		p.log.Error("SCEP challenge not stored", "event", "scep.challenge_failed", "error", err)
		p.recordChallenge(r, "scep.challenge.create", c, plugins.AuditFailure, "challenge store unavailable")
		admin.WriteError(w, http.StatusServiceUnavailable, "challenge store unavailable")
		return
	}
	p.metrics.count(c.Source, ResultCreated)
	p.recordChallenge(r, "scep.challenge.create", c, plugins.AuditSuccess, "")
	p.log.Info("SCEP challenge created", "event", "scep.challenge_created", "challenge", c.ID, "provisioner", c.Provisioner,
		"source", c.Source, "createdBy", c.CreatedBy, "expiresAt", c.ExpiresAt, "device", c.Device, "cn", c.CommonName)
	v := view(c, p.host.Now())
	v.Challenge, v.State = secret, ""
	admin.WriteJSON(w, http.StatusCreated, v)
}

// buildChallenge validates a request into a challenge record. Errors name
// the field.
func (p *Plugin) buildChallenge(req *CreateRequest) (*Challenge, error) {
	prov, err := p.provisionerOf(req.Provisioner)
	if err != nil {
		return nil, err
	}
	ttl := p.cfg.ChallengeTTL.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return nil, fmt.Errorf("ttl: invalid duration %q: use a number with a unit such as \"30m\"", clip(req.TTL))
		}
		if d < minTTL || d > p.cfg.MaxChallengeTTL.Duration {
			return nil, fmt.Errorf("ttl: must be between %s and %s, got %s", minTTL, p.cfg.MaxChallengeTTL.Duration, d)
		}
		ttl = d
	}
	b, err := normalizeBindings(req.Bindings)
	if err != nil {
		return nil, err
	}
	now := p.host.Now().UTC()
	return &Challenge{Provisioner: prov, Source: SourceAPI, CreatedAt: now, ExpiresAt: now.Add(ttl), Bindings: b}, nil
}

// provisionerOf resolves the requested provisioner: optional when the
// plugin serves exactly one.
func (p *Plugin) provisionerOf(name string) (string, error) {
	switch {
	case name == "" && len(p.cfg.Provisioners) == 1:
		return p.cfg.Provisioners[0], nil
	case name == "":
		return "", fmt.Errorf("provisioner: required when several are served (%s)", strings.Join(p.cfg.Provisioners, ", "))
	case !p.served(name):
		return "", fmt.Errorf("provisioner: %q is not a SCEP provisioner of %s (%s)", clip(name), Name, strings.Join(p.cfg.Provisioners, ", "))
	}
	return name, nil
}

var errBadDevice = errors.New("device")

// checkNewDevice requires a bound device to exist and be active when the
// challenge is made, so a typo is caught at once.
func (p *Plugin) checkNewDevice(id string) error {
	d, err := p.inventory.Get(id)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return fmt.Errorf("%w: no device %q in the inventory", errBadDevice, id)
	case err != nil:
		return err
	case !d.Active():
		return fmt.Errorf("%w: device %q is %s", errBadDevice, id, d.Status)
	}
	return nil
}

// normalizeBindings checks every binding and returns them in canonical
// form (IP addresses as net/netip prints them).
func normalizeBindings(in Bindings) (Bindings, error) {
	out := Bindings{Device: in.Device, CommonName: in.CommonName}
	if err := printable("device", in.Device, maxDeviceLen); err != nil {
		return out, err
	}
	if err := printable("commonName", in.CommonName, maxCNLen); err != nil {
		return out, err
	}
	lists := []struct {
		field string
		in    []string
		out   *[]string
		check func(string) (string, error)
	}{
		{"dnsNames", in.DNSNames, &out.DNSNames, checkDNSName},
		{"ipAddresses", in.IPAddresses, &out.IPAddresses, checkIP},
		{"emailAddresses", in.EmailAddresses, &out.EmailAddresses, checkEmail},
		{"uris", in.URIs, &out.URIs, checkURI},
	}
	for _, l := range lists {
		if len(l.in) > maxNames {
			return out, fmt.Errorf("%s: at most %d entries, got %d", l.field, maxNames, len(l.in))
		}
		for i, s := range l.in {
			v, err := l.check(s)
			if err != nil {
				return out, fmt.Errorf("%s[%d]: %w", l.field, i, err)
			}
			if !slices.Contains(*l.out, v) {
				*l.out = append(*l.out, v)
			}
		}
	}
	return out, nil
}

// printable checks an optional single-line text field.
func printable(field, s string, limit int) error {
	if s == "" {
		return nil
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: must be valid UTF-8", field)
	}
	if n := utf8.RuneCountInString(s); n > limit {
		return fmt.Errorf("%s: must be at most %d characters, got %d", field, limit, n)
	}
	if strings.TrimSpace(s) != s {
		return fmt.Errorf("%s: must not begin or end with white space", field)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%s: character %U is not printable", field, r)
		}
	}
	return nil
}

func checkDNSName(s string) (string, error) {
	if s == "" || len(s) > maxNameLen {
		return "", fmt.Errorf("must be a DNS name of 1 to %d characters", maxNameLen)
	}
	name := strings.TrimPrefix(s, "*.")
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return "", fmt.Errorf("%q is not a DNS name", clip(s))
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return "", fmt.Errorf("%q is not a DNS name", clip(s))
			}
		}
	}
	return strings.ToLower(s), nil
}

func checkIP(s string) (string, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("%q is not an IP address", clip(s))
	}
	return a.Unmap().String(), nil
}

func checkEmail(s string) (string, error) {
	if s == "" || len(s) > maxNameLen {
		return "", fmt.Errorf("must be an e-mail address of 1 to %d characters", maxNameLen)
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" {
		return "", fmt.Errorf("%q is not a bare e-mail address (local@domain)", clip(s))
	}
	return s, nil
}

func checkURI(s string) (string, error) {
	if s == "" || len(s) > maxURILen {
		return "", fmt.Errorf("must be a URI of 1 to %d characters", maxURILen)
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.String() != s {
		return "", fmt.Errorf("%q is not an absolute URI in canonical form", clip(s))
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return "", fmt.Errorf("%q contains white space or control characters", clip(s))
		}
	}
	return s, nil
}

// maxList bounds a listing: outstanding challenges are bounded by their
// TTL and the purge, but a listing must not grow without limit.
const maxList = 10000

func (p *Plugin) listChallenges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prov := q.Get("provisioner")
	if prov != "" && !p.served(prov) {
		admin.WriteError(w, http.StatusBadRequest, "provisioner: %q is not a SCEP provisioner of %s", clip(prov), Name)
		return
	}
	all := false
	switch v := q.Get("all"); v {
	case "", "false":
	case "true":
		all = true
	default:
		admin.WriteError(w, http.StatusBadRequest, "all: must be true or false, got %q", clip(v))
		return
	}
	now := p.host.Now()
	out := []ChallengeView{}
	truncated := false
	err := p.challenges.ForEach(func(c *Challenge) error {
		if prov != "" && c.Provisioner != prov || !all && c.StateAt(now) != StateOutstanding {
			return nil
		}
		if len(out) >= maxList {
			truncated = true
			return errBatchFull
		}
		out = append(out, view(c, now))
		return nil
	})
	if err != nil && !errors.Is(err, errBatchFull) {
		p.log.Error("SCEP challenge listing failed", "error", err)
		admin.WriteError(w, http.StatusServiceUnavailable, "challenge store unavailable")
		return
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	body := map[string]any{"challenges": out}
	if truncated {
		body["truncated"] = true
	}
	admin.WriteJSON(w, http.StatusOK, body)
}

func (p *Plugin) withdrawChallenge(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	c, err := p.challenges.Withdraw(id, p.host.Now())
	switch {
	case errors.Is(err, ErrNotFound):
		p.recordChallenge(r, "scep.challenge.withdraw", &Challenge{ID: clip(id)}, plugins.AuditDenied, "no outstanding SCEP challenge")
		admin.WriteError(w, http.StatusNotFound, "no outstanding SCEP challenge %q", clip(id))
		return
	case errors.Is(err, ErrConsumed):
		p.recordChallenge(r, "scep.challenge.withdraw", c, plugins.AuditDenied, "challenge already consumed")
		admin.WriteError(w, http.StatusConflict, "SCEP challenge %s was consumed at %s and cannot be withdrawn", c.ID, c.ConsumedAt.UTC().Format(time.RFC3339))
		return
	case err != nil:
		p.log.Error("SCEP challenge withdrawal failed", "challenge", clip(id), "error", err)
		p.recordChallenge(r, "scep.challenge.withdraw", &Challenge{ID: clip(id)}, plugins.AuditFailure, "challenge store unavailable")
		admin.WriteError(w, http.StatusServiceUnavailable, "challenge store unavailable")
		return
	}
	by := ""
	if t := admin.TokenFrom(r); t != nil {
		by = fmt.Sprintf("token:%s (%s)", t.ID, t.Name)
	}
	p.metrics.count(c.Source, ResultWithdrawn)
	p.recordChallenge(r, "scep.challenge.withdraw", c, plugins.AuditSuccess, "")
	p.log.Info("SCEP challenge withdrawn", "event", "scep.challenge_withdrawn", "challenge", c.ID, "provisioner", c.Provisioner, "by", by)
	w.WriteHeader(http.StatusNoContent)
}
