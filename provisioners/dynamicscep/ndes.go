package dynamicscep

import (
	"crypto/md5" //nolint:gosec // NDES shows the MD5 thumbprint of the CA certificate; it is a display format, not a security check
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"github.com/go-chi/chi/v5"
	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/scep"
	scepapi "github.com/smallstep/certificates/scep/api"

	"github.com/stepfort/stepfort/config"
)

// SourceNDES is the source of challenges handed out by the NDES-compatible
// mscep_admin page.
const SourceNDES = "ndes"

// Limits and defaults of the NDES emulation.
const (
	defaultPasswordCacheSize = 5 // NDES's PasswordMax
	maxPasswordCacheSize     = 1000
	maxNDESUsers             = 256
	defaultNDESTTL           = 60 * time.Minute // NDES's PasswordValidity
	// ndesChallengeBytes is NDES's PasswordLength: 8 bytes, shown as 16
	// upper-case hex digits, the length scrapers such as PSNDESEnrollment
	// match.
	ndesChallengeBytes = 8
)

// NDESConfig is the "ndes" block: the Microsoft NDES URLs. A nil block
// serves none of them.
type NDESConfig struct {
	// Provisioner is the SCEP provisioner served at
	// /certsrv/mscep/mscep.dll and the one mscep_admin challenges are for
	// (default: the plugin's first provisioner).
	Provisioner string `json:"provisioner,omitempty"`
	// Users may fetch challenges from /certsrv/mscep_admin/.
	Users []NDESUser `json:"users,omitempty"`
	// PasswordCacheSize is how many outstanding challenges one user may
	// hold; the next page says "The password cache is full." (default 5).
	PasswordCacheSize int `json:"passwordCacheSize,omitempty"`
	// ChallengeTTL is the lifetime of a page's challenge (default 60m).
	ChallengeTTL config.Duration `json:"challengeTTL,omitempty"`
	// IntuneMode answers a bare GET of mscep.dll 403, as NDES with the
	// Intune connector does (Microsoft's checks expect it). It is on
	// anyway when the intune block validates Provisioner.
	IntuneMode bool `json:"intuneMode,omitempty"`

	creds []*credential
	// mu serialises the count-then-create of the password cache on this
	// replica.
	mu sync.Mutex
}

// NDESUser is one account of the mscep_admin page.
type NDESUser struct {
	Username     string `json:"username"`
	PasswordFile string `json:"passwordFile"`
	// Enroll false gives the account NDES's "You do not have sufficient
	// permission to enroll with SCEP." page (default true).
	Enroll *bool `json:"enroll,omitempty"`
}

func (u *NDESUser) canEnroll() bool { return u.Enroll == nil || *u.Enroll }

// validate fills the defaults, checks the block and reads every user's
// password file. A nil block is off.
func (n *NDESConfig) validate(c *Config) error {
	if n == nil {
		return nil
	}
	if n.Provisioner == "" {
		n.Provisioner = c.Provisioners[0]
	}
	if !containsString(c.Provisioners, n.Provisioner) {
		return config.Errorf("ndes.provisioner", "%q is not one of provisioners (%s)", n.Provisioner, strings.Join(c.Provisioners, ", "))
	}
	if n.PasswordCacheSize == 0 {
		n.PasswordCacheSize = defaultPasswordCacheSize
	}
	if n.PasswordCacheSize < 1 || n.PasswordCacheSize > maxPasswordCacheSize {
		return config.Errorf("ndes.passwordCacheSize", "must be between 1 and %d, got %d", maxPasswordCacheSize, n.PasswordCacheSize)
	}
	if n.ChallengeTTL.Duration == 0 {
		n.ChallengeTTL.Duration = defaultNDESTTL
	}
	if d := n.ChallengeTTL.Duration; d < time.Minute || d > c.MaxChallengeTTL.Duration {
		return config.Errorf("ndes.challengeTTL", "must be between 1m and maxChallengeTTL (%s), got %s", c.MaxChallengeTTL.Duration, d)
	}
	if len(n.Users) > maxNDESUsers {
		return config.Errorf("ndes.users", "at most %d users, got %d", maxNDESUsers, len(n.Users))
	}
	n.creds = make([]*credential, len(n.Users))
	for i := range n.Users {
		u := &n.Users[i]
		for _, prev := range n.Users[:i] {
			if prev.Username == u.Username {
				return config.Errorf(fmt.Sprintf("ndes.users[%d].username", i), "%q appears twice", u.Username)
			}
		}
		cred, err := loadCredential(fmt.Sprintf("ndes.users[%d]", i), u.Username, u.PasswordFile)
		if err != nil {
			return err
		}
		n.creds[i] = cred
	}
	return nil
}

// Case-insensitive path segments: IIS matches paths so, and /CertSrv/...
// appears in the wild. chi matches a regexp per segment.
const (
	ndesCertsrv   = "/{ndes0:(?i)certsrv}"
	ndesDLL       = ndesCertsrv + "/{ndes1:(?i)mscep}/{ndes2:(?i)mscep\\.dll}"
	ndesPKIClient = ndesDLL + "/{ndes3:(?i)pkiclient\\.exe}"
	ndesAdmin     = ndesCertsrv + "/{ndes1:(?i)mscep_admin}"
)

// ndesRoutes mounts the NDES URLs; the daemon calls it for both listeners,
// as NDES serves both.
func (p *Plugin) ndesRoutes(r chi.Router) {
	if p.cfg.NDES == nil {
		return
	}
	for _, pattern := range []string{ndesDLL, ndesPKIClient} {
		r.Get(pattern, p.ndesSCEP)
		r.Post(pattern, p.ndesSCEP)
	}
	r.Get(ndesAdmin, p.ndesAdminPage)
	r.Get(ndesAdmin+"/", p.ndesAdminPage)
}

// ndesSCEP serves the configured provisioner through upstream's SCEP
// handlers, as /scep/<provisioner> does. A GET without an operation is
// NDES's information page, or 403 in Intune mode.
func (p *Plugin) ndesSCEP(w http.ResponseWriter, r *http.Request) {
	cfg := p.cfg.NDES
	if r.Method == http.MethodGet && r.URL.Query().Get("operation") == "" {
		if p.ndesIntuneMode() {
			textError(w, http.StatusForbidden, "403 Forbidden")
			return
		}
		writeNDESPage(w, http.StatusOK, ndesInfoPage)
		return
	}
	ctx := r.Context()
	auth, ok := authority.FromContext(ctx)
	if _, hasSCEP := scep.FromContext(ctx); !ok || !hasSCEP {
		textError(w, http.StatusNotFound, "SCEP is not enabled")
		return
	}
	prov, err := auth.LoadProvisionerByName(cfg.Provisioner)
	if err != nil {
		textError(w, http.StatusNotFound, fmt.Sprintf("provisioner %s not found", cfg.Provisioner))
		return
	}
	sp, ok := prov.(*provisioner.SCEP)
	if !ok {
		textError(w, http.StatusInternalServerError, "provisioner must be of type SCEP")
		return
	}
	r = r.WithContext(scep.NewProvisionerContext(ctx, scep.Provisioner(sp)))
	if r.Method == http.MethodPost {
		scepapi.Post(w, r)
		return
	}
	scepapi.Get(w, r)
}

// ndesIntuneMode: intuneMode is set, or the NDES provisioner is one the
// intune block validates, as NDES with the Intune connector.
func (p *Plugin) ndesIntuneMode() bool {
	n := p.cfg.NDES
	return n.IntuneMode || p.cfg.Intune != nil && containsString(p.cfg.Intune.Provisioners, n.Provisioner)
}

// The mscep_admin page, byte for byte as NDES writes it (research §2.2):
// {0} the CA thumbprint, {1} the challenge, {2} the validity in minutes.
const (
	ndesPageHead = `<HTML><Head><Meta HTTP-Equiv="Content-Type" Content="text/html; charset=UTF-8"><Title>Network Device Enrollment Service</Title></Head><Body BgColor=#FFFFFF><Font ID=locPageFont Face="Arial"><Table Border=0 CellSpacing=0 CellPadding=4 Width=100% BgColor=#008080><TR><TD><Font ID=locPageTitleFont Face="Arial" Size=-1 Color=#FFFFFF><LocID ID=locMSCertSrv>Network Device Enrollment Service</LocID></Font></TD></TR></Table>`
	ndesPageTail = `<P></Font></Body></HTML>`
	// NDESPageTemplate is the page with a challenge.
	NDESPageTemplate = ndesPageHead + `<P ID=locPageTitle> Network Device Enrollment Service allows you to obtain certificates for routers or other network devices using the Simple Certificate Enrollment Protocol (SCEP). </P><P> To complete certificate enrollment for your network device you will need the following information: <P> The thumbprint (hash value) for the CA certificate is: <B> {0} </B> <P> The enrollment challenge password is: <B> {1} </B> <P> This password can be used only once and will expire within {2} minutes. <P> Each enrollment requires a new challenge password. You can refresh this web page to obtain a new challenge password. </P> <P ID=locPageDesc> For more information see  <A HREF=http://go.microsoft.com/fwlink/?LinkId=67852>Using Network Device Enrollment Service </A>. </P> ` + ndesPageTail
	// NDESCacheFull and NDESNoPermission are the texts clients match.
	NDESCacheFull    = "The password cache is full."
	NDESNoPermission = "You do not have sufficient permission to enroll with SCEP."
	ndesInfoPage     = ndesPageHead + `<P ID=locPageTitle> Network Device Enrollment Service allows you to obtain certificates for routers or other network devices using the Simple Certificate Enrollment Protocol (SCEP). </P><P> This URL is used by network devices to submit certificate requests. </P><P> To obtain an enrollment challenge password, go to the admin URL. By default, the admin URL is /CertSrv/mscep_admin/ </P>` + ndesPageTail
)

// ndesMessagePage is the page frame around one message.
func ndesMessagePage(msg string) string {
	return ndesPageHead + `<P ID=locPageTitle> ` + msg + ` </P>` + ndesPageTail
}

// NDESPage fills the template.
func NDESPage(thumbprint, challenge string, minutes int) string {
	return strings.NewReplacer("{0}", thumbprint, "{1}", challenge, "{2}", strconv.Itoa(minutes)).Replace(NDESPageTemplate)
}

// NDESThumbprint formats a certificate's MD5 as NDES shows it: 32
// upper-case hex digits in four groups of eight.
func NDESThumbprint(der []byte) string {
	sum := md5.Sum(der) //nolint:gosec // display format, see the import
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	return h[0:8] + " " + h[8:16] + " " + h[16:24] + " " + h[24:32]
}

// EncodeUTF16LE is NDES's encoding of its pages: a byte-order mark and
// UTF-16 little endian (the meta tag's UTF-8 notwithstanding; scrapers
// rely on the BOM).
func EncodeUTF16LE(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 2, 2+2*len(u))
	b[0], b[1] = 0xFF, 0xFE
	for _, c := range u {
		b = append(b, byte(c), byte(c>>8))
	}
	return b
}

func writeNDESPage(w http.ResponseWriter, status int, page string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-16")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(EncodeUTF16LE(page))
}

// ndesAdminPage is /certsrv/mscep_admin/: a fresh one-time challenge
// per authenticated request, within the user's password cache.
func (p *Plugin) ndesAdminPage(w http.ResponseWriter, r *http.Request) {
	cfg := p.cfg.NDES
	cred := authenticate(r, cfg.creds)
	if cred == nil {
		p.metrics.count(SourceNDES, ResultUnauthorized)
		p.log.Warn("NDES admin page: bad credentials", "event", "scep.challenge_unauthorized", "source", SourceNDES, "remote", r.RemoteAddr)
		unauthorized(w, "NDES")
		return
	}
	user := cfg.userOf(cred)
	if !user.canEnroll() {
		p.metrics.count(SourceNDES, ResultUnauthorized)
		p.log.Warn("NDES admin page: user may not enroll", "event", "scep.challenge_forbidden", "source", SourceNDES, "user", user.Username)
		writeNDESPage(w, http.StatusOK, ndesMessagePage(NDESNoPermission))
		return
	}
	thumb, err := p.ndesThumbprint(r)
	if err != nil {
		p.log.Error("NDES admin page: no CA certificate", "error", err)
		textError(w, http.StatusServiceUnavailable, "CA certificate unavailable")
		return
	}
	secret, c, err := p.ndesChallenge(cfg, user.Username)
	switch {
	case errors.Is(err, errCacheFull):
		p.metrics.count(SourceNDES, ResultCacheFull)
		p.log.Warn("NDES admin page: password cache full", "event", "scep.challenge_cache_full", "source", SourceNDES, "user", user.Username)
		writeNDESPage(w, http.StatusOK, ndesMessagePage(NDESCacheFull))
		return
	case err != nil:
		p.metrics.count(SourceNDES, ResultError)
		p.log.Error("SCEP challenge not stored", "event", "scep.challenge_failed", "source", SourceNDES, "error", err)
		textError(w, http.StatusServiceUnavailable, "challenge store unavailable")
		return
	}
	p.metrics.count(SourceNDES, ResultCreated)
	p.log.Info("SCEP challenge created", "event", "scep.challenge_created", "challenge", c.ID, "provisioner", c.Provisioner,
		"source", SourceNDES, "createdBy", c.CreatedBy, "expiresAt", c.ExpiresAt)
	minutes := int((cfg.ChallengeTTL.Duration + time.Minute - 1) / time.Minute)
	writeNDESPage(w, http.StatusOK, NDESPage(thumb, secret, minutes))
}

func (n *NDESConfig) userOf(c *credential) *NDESUser {
	for i, u := range n.creds {
		if u == c {
			return &n.Users[i]
		}
	}
	return &NDESUser{Username: c.username, Enroll: new(bool)}
}

// ndesThumbprint is the thumbprint of the issuing CA certificate, the
// one NDES shows.
func (p *Plugin) ndesThumbprint(r *http.Request) (string, error) {
	auth, ok := authority.FromContext(r.Context())
	if !ok {
		auth = p.host.Authority()
	}
	if auth == nil {
		return "", errors.New("no authority")
	}
	cert := auth.GetIntermediateCertificate()
	if cert == nil {
		return "", errors.New("no intermediate certificate")
	}
	return NDESThumbprint(cert.Raw), nil
}

var errCacheFull = errors.New("password cache full")

// ndesChallenge creates a challenge for user unless the user holds
// passwordCacheSize outstanding ones. The count and the create are
// serialised on this replica; replicas may together exceed the cache by
// one per replica.
func (p *Plugin) ndesChallenge(cfg *NDESConfig, username string) (string, *Challenge, error) {
	cfg.mu.Lock()
	defer cfg.mu.Unlock()
	by := "ndes:" + username
	now := p.host.Now().UTC()
	n := 0
	err := p.challenges.ForEach(func(c *Challenge) error {
		if c.Source == SourceNDES && c.CreatedBy == by && c.StateAt(now) == StateOutstanding {
			n++
		}
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	if n >= cfg.PasswordCacheSize {
		return "", nil, errCacheFull
	}
	c := &Challenge{Provisioner: cfg.Provisioner, Source: SourceNDES, CreatedAt: now, ExpiresAt: now.Add(cfg.ChallengeTTL.Duration), CreatedBy: by}
	secret, err := p.challenges.CreateSized(c, ndesChallengeBytes)
	return secret, c, err
}
