package ui

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
)

// certView is a certificate as GET /api/v1/certificates shows it (the
// fields the pages use).
type certView struct {
	Serial         string   `json:"serial"`
	SerialHex      string   `json:"serialHex"`
	CommonName     string   `json:"commonName"`
	DNSNames       []string `json:"dnsNames"`
	IPAddresses    []string `json:"ipAddresses"`
	EmailAddresses []string `json:"emailAddresses"`
	URIs           []string `json:"uris"`
	Provisioner    struct {
		Name string `json:"name"`
		Type string `json:"type"`
	} `json:"provisioner"`
	NotBefore  time.Time `json:"notBefore"`
	NotAfter   time.Time `json:"notAfter"`
	Issuer     string    `json:"issuer"`
	Revocation *struct {
		ReasonCode int       `json:"reasonCode"`
		Reason     string    `json:"reason"`
		RevokedAt  time.Time `json:"revokedAt"`
	} `json:"revocation"`
	Endpoint     string `json:"endpoint"`
	Device       string `json:"device"`
	ParentSerial string `json:"parentSerial"`
	Status       string `json:"status"`
	PEM          string `json:"pem"`
	DaysLeft     int    `json:"-"`
	hoursLeft    int
}

// Left is the time to expiry, for people: days, or hours in the last day.
func (c *certView) Left() string {
	if c.DaysLeft >= 1 {
		return strconv.Itoa(c.DaysLeft) + " d"
	}
	if h := c.hoursLeft; h > 0 {
		return strconv.Itoa(h) + " h"
	}
	return "< 1 h"
}

// Names is the CN and SANs, for the list.
func (c *certView) Names() string {
	var n []string
	if c.CommonName != "" {
		n = append(n, c.CommonName)
	}
	for _, s := range append(append(append(append([]string{}, c.DNSNames...), c.IPAddresses...), c.EmailAddresses...), c.URIs...) {
		if s != c.CommonName {
			n = append(n, s)
		}
	}
	return strings.Join(n, ", ")
}

func (c *certView) setLeft(now time.Time) {
	h := c.NotAfter.Sub(now).Hours()
	c.DaysLeft, c.hoursLeft = int(h/24), int(h)
}

type certPage struct {
	Certificates []certView
	NextCursor   string
	Filter       certFilter
	Export       string
	FirstPage    bool
}

// certFilter is the search form; it maps onto GET /api/v1/certificates.
type certFilter struct {
	Q, Serial, Status, Provisioner, Expiring, Sort, Cursor string
	// Revoked is "month": revoked since the first of this month (UTC).
	Revoked string
}

func (f certFilter) api(now time.Time, withPage bool) url.Values {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("q", f.Q)
	set("serial", f.Serial)
	set("status", f.Status)
	set("provisioner", f.Provisioner)
	if f.Revoked == "month" {
		u := now.UTC()
		v.Set("revokedSince", time.Date(u.Year(), u.Month(), 1, 0, 0, 0, 0, time.UTC).Format(time.RFC3339))
	}
	if days, err := strconv.Atoi(f.Expiring); err == nil && days > 0 {
		v.Set("status", "active")
		v.Set("expiresBefore", now.Add(time.Duration(days)*24*time.Hour).UTC().Format(time.RFC3339))
	}
	switch f.Sort {
	case "newest":
		v.Set("sort", "issued")
		v.Set("order", "desc")
	default:
		v.Set("sort", "notAfter")
	}
	if withPage {
		v.Set("limit", strconv.Itoa(pageSize))
		set("cursor", f.Cursor)
	}
	return v
}

func filterOf(r *http.Request) certFilter {
	q := r.URL.Query()
	f := certFilter{Q: q.Get("q"), Serial: q.Get("serial"), Status: q.Get("status"), Provisioner: q.Get("provisioner"),
		Expiring: q.Get("expiring"), Sort: q.Get("sort"), Cursor: q.Get("cursor"), Revoked: q.Get("revoked")}
	if f.Revoked != "month" {
		f.Revoked = ""
	}
	if f.Expiring != "" && f.Expiring != "7" && f.Expiring != "30" && f.Expiring != "90" {
		f.Expiring = ""
	}
	// A search that looks like a serial also searches serials.
	if f.Serial == "" && looksLikeSerial(f.Q) {
		f.Serial, f.Q = f.Q, ""
	}
	return f
}

// looksLikeSerial: colon-separated hex, 0x-hex, or 12+ digits (no name
// is that).
func looksLikeSerial(q string) bool {
	q = strings.TrimSpace(q)
	if q == "" || len(q) > 64 {
		return false
	}
	if strings.HasPrefix(q, "0x") || (strings.Contains(q, ":") && strings.Trim(strings.ToLower(q), "0123456789abcdef:") == "") {
		return true
	}
	return len(q) >= 12 && strings.Trim(q, "0123456789") == ""
}

func (s *Server) certificates(w http.ResponseWriter, r *http.Request) {
	now := s.opts.Now()
	f := filterOf(r)
	p := &page{Title: "Certificates", Nav: "certificates"}
	var list struct {
		Certificates []certView `json:"certificates"`
		NextCursor   string     `json:"nextCursor"`
	}
	data := &certPage{Filter: f, FirstPage: f.Cursor == ""}
	data.Export = Prefix + "/certificates/export?" + f.api(now, false).Encode()
	p.Data = data
	part := "layout.html"
	if r.URL.Query().Get("partial") == "1" {
		part = "results"
	}
	res := s.call(r, http.MethodGet, "/api/v1/certificates?"+f.api(now, true).Encode(), nil, &list)
	if !res.ok() {
		if part == "results" && res.status != http.StatusUnauthorized {
			p.Error = res.err
			s.renderPart(w, r, res.status, "certificates", part, p)
			return
		}
		s.apiFailed(w, r, res, "certificates", p)
		return
	}
	for i := range list.Certificates {
		c := &list.Certificates[i]
		c.setLeft(now)
	}
	data.Certificates, data.NextCursor = list.Certificates, list.NextCursor
	s.renderPart(w, r, http.StatusOK, "certificates", part, p)
}

func (s *Server) exportCertificates(w http.ResponseWriter, r *http.Request) {
	v := filterOf(r).api(s.opts.Now(), false)
	v.Set("format", "csv")
	s.stream(w, r, "/api/v1/certificates/export?"+v.Encode())
}

// decoded is the parsed certificate on the detail page.
type decoded struct {
	Subject, Issuer, SerialHex, SerialDec, KeyAlgorithm, SignatureAlgorithm, SHA256 string
	NotBefore, NotAfter                                                             time.Time
	DNSNames, IPs, Emails, URIs, KeyUsage, ExtKeyUsage                              []string
	IsCA                                                                            bool
}

func decode(pemText string) *decoded {
	b, _ := pem.Decode([]byte(pemText))
	if b == nil {
		return nil
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(c.Raw)
	d := &decoded{Subject: c.Subject.String(), Issuer: c.Issuer.String(), SerialHex: colonHex(c.SerialNumber),
		SerialDec: c.SerialNumber.String(), KeyAlgorithm: keyDescription(c), SignatureAlgorithm: c.SignatureAlgorithm.String(),
		SHA256: hex.EncodeToString(sum[:]), NotBefore: c.NotBefore, NotAfter: c.NotAfter, DNSNames: c.DNSNames,
		Emails: c.EmailAddresses, IsCA: c.IsCA}
	for _, ip := range c.IPAddresses {
		d.IPs = append(d.IPs, ip.String())
	}
	for _, u := range c.URIs {
		d.URIs = append(d.URIs, u.String())
	}
	for bit, name := range []string{"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment", "keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"} {
		if c.KeyUsage&(1<<bit) != 0 {
			d.KeyUsage = append(d.KeyUsage, name)
		}
	}
	eku := map[x509.ExtKeyUsage]string{x509.ExtKeyUsageServerAuth: "serverAuth", x509.ExtKeyUsageClientAuth: "clientAuth",
		x509.ExtKeyUsageCodeSigning: "codeSigning", x509.ExtKeyUsageEmailProtection: "emailProtection", x509.ExtKeyUsageOCSPSigning: "OCSPSigning", x509.ExtKeyUsageTimeStamping: "timeStamping"}
	for _, u := range c.ExtKeyUsage {
		if n, ok := eku[u]; ok {
			d.ExtKeyUsage = append(d.ExtKeyUsage, n)
		} else {
			d.ExtKeyUsage = append(d.ExtKeyUsage, fmt.Sprint(u))
		}
	}
	return d
}

func keyDescription(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	}
	return c.PublicKeyAlgorithm.String()
}

func colonHex(n *big.Int) string {
	h := n.Text(16)
	if len(h)%2 == 1 {
		h = "0" + h
	}
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// reasons are the RFC 5280 reason codes the revoke form offers.
var reasons = []struct {
	Code int
	Name string
}{{0, "unspecified"}, {1, "keyCompromise"}, {3, "affiliationChanged"}, {4, "superseded"}, {5, "cessationOfOperation"}, {9, "privilegeWithdrawn"}}

type certDetail struct {
	C       certView
	D       *decoded
	Reasons any
}

func (s *Server) certificate(w http.ResponseWriter, r *http.Request) {
	serial := chi.URLParam(r, "serial")
	p := &page{Title: "Certificate " + serial, Nav: "certificates"}
	var c certView
	res := s.call(r, http.MethodGet, "/api/v1/certificates/"+url.PathEscape(serial), nil, &c)
	if !res.ok() {
		s.apiFailed(w, r, res, "certificate", p)
		return
	}
	c.setLeft(s.opts.Now())
	p.Title = "Certificate " + c.CommonName
	p.Data = &certDetail{C: c, D: decode(c.PEM), Reasons: reasons}
	s.render(w, r, http.StatusOK, "certificate", p)
}

// revokeCertificate revokes one certificate through the certificate
// index's revoke-by-filter, with the serial written as unambiguous hex.
func (s *Server) revokeCertificate(w http.ResponseWriter, r *http.Request) {
	serial := chi.URLParam(r, "serial")
	code, err := strconv.Atoi(r.PostFormValue("reasonCode"))
	if err != nil {
		http.Error(w, "reasonCode: must be a number", http.StatusBadRequest)
		return
	}
	var c certView
	res := s.call(r, http.MethodGet, "/api/v1/certificates/"+url.PathEscape(serial), nil, &c)
	if !res.ok() {
		s.apiFailed(w, r, res, "certificate", &page{Title: "Certificate", Nav: "certificates"})
		return
	}
	body := map[string]any{"filter": map[string]string{"serial": "0x" + c.SerialHex}, "reasonCode": code, "reason": r.PostFormValue("reason")}
	var out struct {
		Revoked        int `json:"revoked"`
		AlreadyRevoked int `json:"alreadyRevoked"`
		Failed         []struct {
			Error string `json:"error"`
		} `json:"failed"`
	}
	res = s.call(r, http.MethodPost, "/api/v1/certificates/revoke", body, &out)
	to := Prefix + "/certificates/" + url.PathEscape(c.Serial)
	switch {
	case !res.ok():
		s.apiFailed(w, r, res, "certificate", &page{Title: "Certificate", Nav: "certificates", Data: &certDetail{C: c, D: decode(c.PEM), Reasons: reasons}})
	case len(out.Failed) > 0:
		s.redirectFlash(w, r, to, "Revocation failed: "+out.Failed[0].Error)
	case out.Revoked == 0:
		s.redirectFlash(w, r, to, "Nothing was revoked: the certificate is already revoked or expired.")
	default:
		s.redirectFlash(w, r, to, "Certificate revoked.")
	}
}
