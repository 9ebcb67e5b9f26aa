package dynamicscep

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// IntuneConfig is the "intune" block of the plugin: the named provisioners
// also accept challenges Microsoft Intune minted, validated by Intune's
// SCEP validation service. See docs/scep.md, "Intune".
type IntuneConfig struct {
	// Provisioners are the provisioners (among the plugin's own) whose
	// enrollments with a challenge that is not one of ours go to Intune.
	Provisioners []string `json:"provisioners"`
	// Tenant is the Entra ID tenant (a GUID or contoso.onmicrosoft.com).
	Tenant string `json:"tenant"`
	// ClientID is the Entra ID application (client) id.
	ClientID string `json:"clientID"`
	// ClientSecretFile holds the application's client secret (surrounding
	// whitespace trimmed). Either this or the certificate pair.
	ClientSecretFile string `json:"clientSecretFile,omitempty"`
	// ClientCertificateFile and ClientKeyFile (PEM, RSA) sign an RS256
	// client assertion instead of a secret.
	ClientCertificateFile string `json:"clientCertificateFile,omitempty"`
	ClientKeyFile         string `json:"clientKeyFile,omitempty"`
	// LoginHost is the Entra ID host (default login.microsoftonline.com;
	// login.microsoftonline.us for GCC High).
	LoginHost string `json:"loginHost,omitempty"`
	// GraphHost is the Microsoft Graph host (default graph.microsoft.com).
	GraphHost string `json:"graphHost,omitempty"`
	// RootsFile is a PEM bundle trusted for these calls besides the
	// system roots (a TLS-inspecting proxy, a test mock).
	RootsFile string `json:"rootsFile,omitempty"`
	// Timeout bounds one enrollment's Intune round trip (token,
	// discovery, validateRequest) and each notification (default 5s).
	Timeout config.Duration `json:"timeout"`
	// CallerInfo names this CA to Intune (default "stepfort").
	CallerInfo string `json:"callerInfo,omitempty"`
}

// Defaults and limits of the Intune block.
const (
	defaultLoginHost     = "login.microsoftonline.com"
	defaultGraphHost     = "graph.microsoft.com"
	defaultIntuneTimeout = 5 * time.Second
	minIntuneTimeout     = 100 * time.Millisecond
	// maxIntuneTimeout stays under the daemon's 8s deadline for a SCEP
	// challenge validator: a longer wait would be cut there anyway.
	maxIntuneTimeout  = 7 * time.Second
	defaultCallerInfo = "stepfort"
	// intunePendingTTL is how long a validated enrollment waits for its
	// certificate to be reported to Intune; intuneMaxPending bounds them.
	intunePendingTTL = 10 * time.Minute
	intuneMaxPending = 10000
)

var (
	tenantRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$`)
	clientIDRe   = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	callerInfoRe = regexp.MustCompile(`^[\x21-\x7e][\x20-\x7e]{0,127}$`)
)

func (c *IntuneConfig) loginHost() string { return orDefault(c.LoginHost, defaultLoginHost) }
func (c *IntuneConfig) graphHost() string { return orDefault(c.GraphHost, defaultGraphHost) }
func (c *IntuneConfig) callerInfo() string {
	return orDefault(c.CallerInfo, defaultCallerInfo)
}

func (c *IntuneConfig) timeout() time.Duration {
	if c.Timeout.Duration == 0 {
		return defaultIntuneTimeout
	}
	return c.Timeout.Duration
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Validate checks the block against the plugin's provisioners; errors
// name the JSON path.
func (c *IntuneConfig) Validate(served []string) error {
	if len(c.Provisioners) == 0 {
		return config.Errorf("intune.provisioners", "must name at least one provisioner")
	}
	for i, n := range c.Provisioners {
		if !slices.Contains(served, n) || slices.Contains(c.Provisioners[:i], n) {
			return config.Errorf(fmt.Sprintf("intune.provisioners[%d]", i), "must name one of provisioners once, got %q", n)
		}
	}
	if !tenantRe.MatchString(c.Tenant) {
		return config.Errorf("intune.tenant", "must be a tenant id or domain, got %q", clip(c.Tenant))
	}
	if !clientIDRe.MatchString(c.ClientID) {
		return config.Errorf("intune.clientID", "must be the application (client) id, got %q", clip(c.ClientID))
	}
	cert := c.ClientCertificateFile != "" || c.ClientKeyFile != ""
	switch {
	case c.ClientSecretFile != "" && cert:
		return config.Errorf("intune.clientSecretFile", "set either clientSecretFile or clientCertificateFile and clientKeyFile, not both")
	case c.ClientSecretFile == "" && !cert:
		return config.Errorf("intune.clientSecretFile", "is required (or clientCertificateFile and clientKeyFile)")
	case cert && c.ClientCertificateFile == "":
		return config.Errorf("intune.clientCertificateFile", "is required with clientKeyFile")
	case cert && c.ClientKeyFile == "":
		return config.Errorf("intune.clientKeyFile", "is required with clientCertificateFile")
	}
	for path, h := range map[string]string{"intune.loginHost": c.LoginHost, "intune.graphHost": c.GraphHost} {
		if h == "" {
			continue
		}
		if u, err := url.Parse("https://" + h); err != nil || u.Host != h || u.Hostname() == "" {
			return config.Errorf(path, "must be a host name with an optional :port, got %q", clip(h))
		}
	}
	if d := c.Timeout.Duration; d != 0 && (d < minIntuneTimeout || d > maxIntuneTimeout) {
		return config.Errorf("intune.timeout", "must be between %s and %s, got %s", minIntuneTimeout, maxIntuneTimeout, d)
	}
	if c.CallerInfo != "" && !callerInfoRe.MatchString(c.CallerInfo) {
		return config.Errorf("intune.callerInfo", "must be 1 to 128 printable ASCII characters")
	}
	return nil
}

// ResultRefusedIntune is a challenge Intune answered with another code
// than Success (stepfort_scep_challenges_total{source="intune"}).
const ResultRefusedIntune = "refused_intune"

// SourceIntune is the source label of Intune-minted challenges.
const SourceIntune = "intune"

// intune validates Intune challenges and reports the certificates issued
// for them.
type intune struct {
	cfg     *IntuneConfig
	client  *intuneClient
	metrics *metrics
	audit   plugins.Auditor
	log     *slog.Logger
	now     func() time.Time

	mu      sync.Mutex
	pending map[string]intunePending // by SCEP transaction id
}

// intunePending is an enrollment Intune accepted whose certificate is not
// reported yet.
type intunePending struct {
	provisioner string
	csr         string // base64 PKCS#10, as validated
	until       time.Time
}

// newIntune builds the Intune validator; nil without an intune block.
func newIntune(cfg *IntuneConfig, h plugins.Host, m *metrics) (*intune, error) {
	if cfg == nil {
		return nil, nil
	}
	latency, err := registerIntuneLatency(h.Metrics())
	if err != nil {
		return nil, err
	}
	client, err := newIntuneClient(cfg, h.Now, latency)
	if err != nil {
		return nil, err
	}
	return &intune{cfg: cfg, client: client, metrics: m, audit: h.Audit(), log: h.Logger(), now: h.Now, pending: map[string]intunePending{}}, nil
}

func registerIntuneLatency(reg prometheus.Registerer) (*prometheus.HistogramVec, error) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "stepfort_scep_intune_request_seconds",
		Help:    "Latency of calls to Entra ID, Graph and Intune by call (token, discovery, validateRequest, successNotification, failureNotification) and result (success, refused, error).",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 7.5},
	}, []string{"call", "result"})
	if err := reg.Register(h); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return nil, err
		}
		existing, ok := already.ExistingCollector.(*prometheus.HistogramVec)
		if !ok {
			return nil, err
		}
		h = existing
	}
	return h, nil
}

// serves reports whether enrollments of provisioner go to Intune.
func (in *intune) serves(provisioner string) bool {
	return in != nil && slices.Contains(in.cfg.Provisioners, provisioner)
}

// validate asks Intune about an enrollment whose challenge is not one of
// ours. Anything but a Success answer within the timeout refuses it.
func (in *intune) validate(ctx context.Context, req plugins.SCEPRequest) (map[string]any, error) {
	if req.CSR == nil || req.TransactionID == "" {
		return nil, in.refuse(ctx, req, &Refusal{Result: ResultRefusedMismatch, Reason: "no certificate request or transaction id for Intune"})
	}
	csr := base64.StdEncoding.EncodeToString(req.CSR.Raw)
	vctx, cancel := context.WithTimeout(ctx, in.cfg.timeout())
	defer cancel()
	err := in.client.post(vctx, callValidate, intuneValidate, map[string]any{"request": map[string]any{
		"transactionId": req.TransactionID, "certificateRequest": csr, "callerInfo": in.cfg.callerInfo(),
	}})
	var ce *intuneCodeError
	switch {
	case errors.As(err, &ce):
		return nil, in.refuse(ctx, req, &Refusal{Result: ResultRefusedIntune, Reason: ce.Error()})
	case err != nil:
		return nil, in.refuse(ctx, req, &Refusal{Result: ResultError, Reason: intuneErrorReason(vctx, err)})
	case ctx.Err() != nil:
		// Intune said yes but the daemon has given up on the answer:
		// tell Intune this enrollment failed.
		in.failure(ctx, req.TransactionID, csr, hresultTimeout, "the CA gave up waiting for the validation")
		return nil, in.refuse(ctx, req, &Refusal{Result: ResultError, Reason: "Intune answered after the enrollment deadline"})
	}
	in.track(req.TransactionID, intunePending{provisioner: req.Provisioner, csr: csr, until: in.now().Add(intunePendingTTL)})
	in.metrics.count(SourceIntune, ResultAccepted)
	in.log.Info("SCEP challenge accepted by Intune", "event", "scep.challenge_consumed", "source", SourceIntune, "provisioner", req.Provisioner,
		"transactionID", clip(req.TransactionID), "cn", clip(req.CSR.Subject.CommonName))
	return map[string]any{"source": SourceIntune}, nil
}

// intuneErrorReason names a timeout as such; the error never holds a
// token or the challenge.
func intuneErrorReason(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return "Intune validation timed out: " + err.Error()
	}
	return "Intune validation failed: " + err.Error()
}

// refuse counts, logs and audits a refusal and returns it.
func (in *intune) refuse(ctx context.Context, req plugins.SCEPRequest, r *Refusal) error {
	in.metrics.count(SourceIntune, r.Result)
	recordRefusal(ctx, in.audit, req, SourceIntune, "", "", r)
	level := in.log.Info
	if r.Result == ResultError {
		level = in.log.Error
	}
	cn := ""
	if req.CSR != nil {
		cn = clip(req.CSR.Subject.CommonName)
	}
	level("SCEP challenge refused", "event", "scep.challenge_refused", "source", SourceIntune, "result", r.Result, "provisioner", req.Provisioner,
		"transactionID", clip(req.TransactionID), "cn", cn, "reason", r.Reason)
	return r
}

// track remembers an accepted enrollment until its certificate is
// reported, dropping the expired ones; when full, the enrollment is
// still allowed but will not be reported.
func (in *intune) track(txID string, p intunePending) {
	in.mu.Lock()
	defer in.mu.Unlock()
	now := in.now()
	if len(in.pending) >= intuneMaxPending {
		for k, v := range in.pending {
			if !now.Before(v.until) {
				delete(in.pending, k)
			}
		}
	}
	if len(in.pending) >= intuneMaxPending {
		in.log.Warn("too many Intune enrollments awaiting their certificate; this one will not be reported", "event", "scep.intune_untracked",
			"transactionID", clip(txID))
		return
	}
	in.pending[txID] = p
}

// take removes and returns the pending enrollment of a transaction.
func (in *intune) take(txID, provisioner string) (intunePending, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	p, ok := in.pending[txID]
	if !ok || p.provisioner != provisioner {
		return intunePending{}, false
	}
	delete(in.pending, txID)
	return p, in.now().Before(p.until)
}

// notify reports a certificate issued for an enrollment Intune accepted
// (successNotification): SHA-1 thumbprint and serial in upper-case hex,
// expiry in UTC with milliseconds, and the issuer's name. A failed report
// is logged; the certificate stands.
func (in *intune) notify(ctx context.Context, ev plugins.SCEPIssued) {
	if in == nil || ev.Certificate == nil {
		return
	}
	p, ok := in.take(ev.TransactionID, ev.Provisioner)
	if !ok {
		return
	}
	c := ev.Certificate
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.cfg.timeout())
	defer cancel()
	err := in.client.post(ctx, callSuccess, intuneSuccess, map[string]any{"notification": map[string]any{
		"transactionId":                ev.TransactionID,
		"certificateRequest":           p.csr,
		"certificateThumbprint":        Thumbprint(c.Raw),
		"certificateSerialNumber":      strings.ToUpper(c.SerialNumber.Text(16)),
		"certificateExpirationDateUtc": c.NotAfter.UTC().Format("2006-01-02T15:04:05.000Z"),
		"issuingCertificateAuthority":  c.Issuer.String(),
		"callerInfo":                   in.cfg.callerInfo(),
	}})
	if err != nil {
		in.log.Warn("Intune successNotification failed", "event", "scep.intune_notify_failed", "transactionID", clip(ev.TransactionID),
			"serial", serialOf(c), "error", err)
		return
	}
	in.log.Info("Intune told of the certificate", "event", "scep.intune_notified", "transactionID", clip(ev.TransactionID), "serial", serialOf(c))
}

// hresultTimeout is HRESULT_FROM_WIN32(ERROR_TIMEOUT), what
// failureNotification reports when an enrollment ran out of time.
const hresultTimeout = 0x800705B4

// failure reports an enrollment Intune accepted that will not get a
// certificate (failureNotification). Errors are logged.
func (in *intune) failure(ctx context.Context, txID, csr string, hresult int64, desc string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.cfg.timeout())
	defer cancel()
	err := in.client.post(ctx, callFailure, intuneFailure, map[string]any{"notification": map[string]any{
		"transactionId": txID, "certificateRequest": csr, "hResult": hresult, "errorDescription": clipTo(desc, 255),
		"callerInfo": in.cfg.callerInfo(),
	}})
	if err != nil {
		in.log.Warn("Intune failureNotification failed", "event", "scep.intune_notify_failed", "transactionID", clip(txID), "error", err)
	}
}

func clipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Thumbprint is a certificate's SHA-1 thumbprint as Windows and Intune
// write it: 40 upper-case hex digits.
func Thumbprint(der []byte) string {
	return fmt.Sprintf("%X", sha1Sum(der))
}

// validate checks the block of c; nil (no Intune) is valid.
func (c *IntuneConfig) validate(parent *Config) error {
	if c == nil {
		return nil
	}
	return c.Validate(parent.Provisioners)
}

// isUnknown reports a refusal of a challenge this plugin never issued.
func isUnknown(err error) bool {
	var r *Refusal
	return errors.As(err, &r) && r.Result == ResultRefusedUnknown
}
