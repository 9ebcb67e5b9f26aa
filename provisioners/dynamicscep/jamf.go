package dynamicscep

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/config"
)

// SourceJamf is the source of challenges made for Jamf Pro's
// SCEPChallenge webhook.
const SourceJamf = "jamf"

// Limits of the Jamf webhook.
const (
	// maxJamfBody bounds the webhook's body; Jamf's is a few hundred bytes.
	maxJamfBody = 64 << 10
	maxPathLen  = 256
)

// DefaultJamfPath is where Jamf Pro posts its SCEPChallenge webhook.
const DefaultJamfPath = "/scep/jamf/challenge"

// JamfConfig is the "jamf" block: Jamf Pro's SCEPChallenge webhook,
// answered on the HTTPS listener with the challenge as the raw body.
type JamfConfig struct {
	// Path is where Jamf posts (default DefaultJamfPath).
	Path string `json:"path,omitempty"`
	// Username and PasswordFile are the HTTP Basic credentials Jamf
	// sends. The file holds the password or its bcrypt hash.
	Username     string `json:"username"`
	PasswordFile string `json:"passwordFile"`
	// Provisioner the challenges are for (default: the plugin's first).
	// A webhook whose scepServerUrl names another served provisioner
	// (/scep/<name>) gets a challenge for that one.
	Provisioner string `json:"provisioner,omitempty"`
	// ChallengeTTL is the challenges' lifetime (default: challengeTTL).
	ChallengeTTL config.Duration `json:"challengeTTL,omitempty"`

	cred *credential
}

// validate fills the defaults, checks the block and reads the password
// file, so a bad file fails the start. A nil block is off.
func (j *JamfConfig) validate(c *Config) error {
	if j == nil {
		return nil
	}
	if j.Path == "" {
		j.Path = DefaultJamfPath
	}
	if err := checkRoutePath(j.Path); err != nil {
		return config.Errorf("jamf.path", "%v", err)
	}
	if j.Provisioner == "" {
		j.Provisioner = c.Provisioners[0]
	}
	if !containsString(c.Provisioners, j.Provisioner) {
		return config.Errorf("jamf.provisioner", "%q is not one of provisioners (%s)", j.Provisioner, strings.Join(c.Provisioners, ", "))
	}
	if j.ChallengeTTL.Duration == 0 {
		j.ChallengeTTL = c.ChallengeTTL
	}
	if d := j.ChallengeTTL.Duration; d < minTTL || d > c.MaxChallengeTTL.Duration {
		return config.Errorf("jamf.challengeTTL", "must be between %s and maxChallengeTTL (%s), got %s", minTTL, c.MaxChallengeTTL.Duration, d)
	}
	cred, err := loadCredential("jamf", j.Username, j.PasswordFile)
	if err != nil {
		return err
	}
	j.cred = cred
	return nil
}

// checkRoutePath accepts a clean absolute path without chi pattern
// characters, outside the routes of the admin API and ACME.
func checkRoutePath(p string) error {
	switch {
	case len(p) > maxPathLen:
		return fmt.Errorf("must be at most %d bytes", maxPathLen)
	case !strings.HasPrefix(p, "/") || p == "/" || path.Clean(p) != p:
		return fmt.Errorf("must be a clean absolute path such as %q, got %q", DefaultJamfPath, p)
	case strings.ContainsAny(p, "{}*?#% \t\r\n"):
		return fmt.Errorf("must not contain {, }, *, ?, #, %% or white space, got %q", p)
	}
	for _, reserved := range []string{"/api", "/acme", "/2.0", "/1.0", "/admin", "/certsrv"} {
		if p == reserved || strings.HasPrefix(p, reserved+"/") {
			return fmt.Errorf("must not be under %s, got %q", reserved, p)
		}
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// jamfRoutes mounts the webhook (HTTPS only: it carries a password).
func (p *Plugin) jamfRoutes(r chi.Router) {
	if p.cfg.Jamf != nil {
		r.Post(p.cfg.Jamf.Path, p.jamfChallenge)
	}
}

// JamfEvent is what the plugin reads of Jamf Pro's SCEPChallenge
// webhook body. Other fields are ignored; the body carries no device data,
// so the challenge is bound to a provisioner only.
type JamfEvent struct {
	Webhook struct {
		WebhookEvent string `json:"webhookEvent"`
	} `json:"webhook"`
	Event struct {
		SCEPServerURL     string `json:"scepServerUrl"`
		PayloadIdentifier string `json:"payloadIdentifier"`
	} `json:"event"`
}

// ParseJamfBody decodes a SCEPChallenge webhook body: one JSON object,
// whose webhook.webhookEvent, when present, is SCEPChallenge. Errors name
// the field.
func ParseJamfBody(b []byte) (*JamfEvent, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("body: empty, want Jamf Pro's SCEPChallenge JSON")
	}
	if len(b) > maxJamfBody {
		return nil, fmt.Errorf("body: larger than %d bytes", maxJamfBody)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var ev JamfEvent
	if err := dec.Decode(&ev); err != nil {
		return nil, fmt.Errorf("body: not Jamf Pro's SCEPChallenge JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("body: data after the JSON object")
	}
	if e := ev.Webhook.WebhookEvent; e != "" && !strings.EqualFold(e, "SCEPChallenge") {
		return nil, fmt.Errorf("webhook.webhookEvent: %q, want SCEPChallenge", clip(e))
	}
	return &ev, nil
}

// provisionerFor picks the provisioner of a challenge: the one the event's
// scepServerUrl names (/scep/<name>/...) if the plugin serves it, else
// the configured one.
func (p *Plugin) jamfProvisionerFor(ev *JamfEvent) string {
	u, err := url.Parse(ev.Event.SCEPServerURL)
	if err != nil || u.Path == "" {
		return p.cfg.Jamf.Provisioner
	}
	rest, ok := strings.CutPrefix(u.EscapedPath(), "/scep/")
	if !ok {
		return p.cfg.Jamf.Provisioner
	}
	seg, _, _ := strings.Cut(rest, "/")
	if name, err := url.PathUnescape(seg); err == nil && p.served(name) {
		return name
	}
	return p.cfg.Jamf.Provisioner
}

// jamfChallenge answers Jamf's webhook: 200 with a fresh challenge as
// the raw text/plain body. Wrong or missing credentials get 401 and
// create nothing; the body is read only after they are checked.
func (p *Plugin) jamfChallenge(w http.ResponseWriter, r *http.Request) {
	cfg := p.cfg.Jamf
	if authenticate(r, []*credential{cfg.cred}) == nil {
		p.metrics.count(SourceJamf, ResultUnauthorized)
		p.log.Warn("Jamf SCEP challenge webhook: bad credentials", "event", "scep.challenge_unauthorized", "source", SourceJamf, "remote", r.RemoteAddr)
		unauthorized(w, "stepfort Jamf SCEP challenge")
		return
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxJamfBody+1))
	if err != nil {
		textError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	if len(b) > maxJamfBody {
		textError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: larger than %d bytes", maxJamfBody))
		return
	}
	ev, err := ParseJamfBody(b)
	if err != nil {
		textError(w, http.StatusBadRequest, err.Error())
		return
	}
	now := p.host.Now().UTC()
	c := &Challenge{Provisioner: p.jamfProvisionerFor(ev), Source: SourceJamf, CreatedAt: now,
		ExpiresAt: now.Add(cfg.ChallengeTTL.Duration), CreatedBy: "jamf:" + cfg.Username}
	secret, err := p.challenges.Create(c)
	if err != nil {
		p.metrics.count(SourceJamf, ResultError)
		p.log.Error("SCEP challenge not stored", "event", "scep.challenge_failed", "source", SourceJamf, "error", err)
		textError(w, http.StatusServiceUnavailable, "challenge store unavailable")
		return
	}
	p.metrics.count(SourceJamf, ResultCreated)
	p.log.Info("SCEP challenge created", "event", "scep.challenge_created", "challenge", c.ID, "provisioner", c.Provisioner,
		"source", SourceJamf, "createdBy", c.CreatedBy, "expiresAt", c.ExpiresAt, "payloadIdentifier", clip(ev.Event.PayloadIdentifier))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, secret)
}

// textError answers a plain-text error, what Jamf and NDES clients show.
func textError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// ResultUnauthorized counts requests of a challenge source with bad
// credentials; ResultCacheFull NDES page requests of a user whose
// password cache is full.
const (
	ResultUnauthorized = "unauthorized"
	ResultCacheFull    = "cache_full"
)
