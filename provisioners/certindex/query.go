package certindex

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Sort orders.
const (
	SortNotAfter = "notAfter" // by expiry
	SortIssued   = "issued"   // by issuance (notBefore)
)

// Page size bounds of GET /certificates.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	maxNeedle    = 256
	maxFilterLen = 256
)

// Filter selects certificates. Every set field must match.
type Filter struct {
	// Q is a substring of the subject CN or a SAN, case-insensitive.
	Q string `json:"q,omitempty"`
	// Serials are the decimal forms the serial filter may mean
	// (SerialForms); any of them matches.
	Serials     []string `json:"serials,omitempty"`
	Provisioner string   `json:"provisioner,omitempty"` // provisioner name, exact
	Status      string   `json:"status,omitempty"`      // active, expired or revoked
	// ExpiresBefore keeps notAfter < t; ExpiresAfter keeps notAfter > t.
	ExpiresBefore *time.Time `json:"expiresBefore,omitempty"`
	ExpiresAfter  *time.Time `json:"expiresAfter,omitempty"`
	// RevokedSince keeps certificates revoked at or after t; RevokedBefore
	// those revoked before t. Either one keeps revoked certificates only.
	RevokedSince  *time.Time `json:"revokedSince,omitempty"`
	RevokedBefore *time.Time `json:"revokedBefore,omitempty"`
	Device        string     `json:"device,omitempty"`
	Endpoint      string     `json:"endpoint,omitempty"`
	// notRevoked is set by revoke-by-filter: certificates already revoked
	// never match.
	notRevoked bool
}

// Empty reports whether the filter selects every certificate.
func (f *Filter) Empty() bool {
	return f.Q == "" && len(f.Serials) == 0 && f.Provisioner == "" && f.Status == "" &&
		f.ExpiresBefore == nil && f.ExpiresAfter == nil && f.RevokedSince == nil && f.RevokedBefore == nil &&
		f.Device == "" && f.Endpoint == ""
}

// Query is one page request.
type Query struct {
	Filter
	Sort  string // SortNotAfter or SortIssued
	Desc  bool
	Limit int
	After *Cursor // continue after this position; nil for the first page
	Now   time.Time
}

// Cursor is a position in one sort order: the sort key of the last row
// returned and its serial, which breaks ties. The sort keys never change
// (notAfter and notBefore are the certificate's), so a page continues
// exactly where the previous one stopped however many certificates are
// issued or revoked in between: no duplicates, no gaps.
type Cursor struct {
	Sort   string `json:"s"`
	Desc   bool   `json:"d,omitempty"`
	Key    int64  `json:"k"` // Unix seconds
	Serial string `json:"n"`
}

// Encode makes the opaque cursor string.
func (c *Cursor) Encode() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor parses a cursor string made by Encode.
func decodeCursor(s string) (*Cursor, error) {
	if len(s) > 512 {
		return nil, fmt.Errorf("cursor: too long")
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("cursor: not a cursor from this API")
	}
	var c Cursor
	if err := json.Unmarshal(b, &c); err != nil || (c.Sort != SortNotAfter && c.Sort != SortIssued) || !digits(c.Serial) {
		return nil, fmt.Errorf("cursor: not a cursor from this API")
	}
	return &c, nil
}

func digits(s string) bool {
	if s == "" || len(s) > maxSerialLen {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// ParseFilter reads the filter parameters of a request.
func ParseFilter(v url.Values) (Filter, error) {
	var f Filter
	f.Q = strings.TrimSpace(v.Get("q"))
	if len(f.Q) > maxNeedle {
		return f, fmt.Errorf("q: at most %d bytes, got %d", maxNeedle, len(f.Q))
	}
	if strings.IndexFunc(f.Q, unicode.IsControl) >= 0 {
		return f, fmt.Errorf("q: control characters are not allowed")
	}
	f.Q = strings.ToLower(f.Q)
	if s := v.Get("serial"); s != "" {
		forms, err := SerialForms(s)
		if err != nil {
			return f, err
		}
		f.Serials = forms
	}
	for name, dst := range map[string]*string{"provisioner": &f.Provisioner, "device": &f.Device, "endpoint": &f.Endpoint} {
		*dst = v.Get(name)
		if len(*dst) > maxFilterLen {
			return f, fmt.Errorf("%s: at most %d bytes", name, maxFilterLen)
		}
	}
	switch f.Status = v.Get("status"); f.Status {
	case "", StatusActive, StatusExpired, StatusRevoked:
	default:
		return f, fmt.Errorf("status: must be %s, %s or %s, got %q", StatusActive, StatusExpired, StatusRevoked, f.Status)
	}
	times := map[string]**time.Time{"expiresBefore": &f.ExpiresBefore, "expiresAfter": &f.ExpiresAfter,
		"revokedSince": &f.RevokedSince, "revokedBefore": &f.RevokedBefore}
	for name, dst := range times {
		s := v.Get(name)
		if s == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return f, fmt.Errorf("%s: must be an RFC 3339 time (2026-01-02T15:04:05Z), got %q", name, s)
		}
		*dst = &t
	}
	return f, nil
}

// ParseQuery reads GET /certificates parameters.
func ParseQuery(v url.Values, now time.Time) (*Query, error) {
	f, err := ParseFilter(v)
	if err != nil {
		return nil, err
	}
	q := &Query{Filter: f, Sort: SortNotAfter, Limit: DefaultLimit, Now: now}
	if s := v.Get("sort"); s != "" {
		q.Sort = s
	}
	if q.Sort != SortNotAfter && q.Sort != SortIssued {
		return nil, fmt.Errorf("sort: must be %s or %s, got %q", SortNotAfter, SortIssued, q.Sort)
	}
	switch o := v.Get("order"); o {
	case "", "asc":
	case "desc":
		q.Desc = true
	default:
		return nil, fmt.Errorf("order: must be asc or desc, got %q", o)
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			return nil, fmt.Errorf("limit: must be an integer from 1 to %d, got %q", MaxLimit, s)
		}
		q.Limit = n
	}
	if s := v.Get("cursor"); s != "" {
		c, err := decodeCursor(s)
		if err != nil {
			return nil, err
		}
		if c.Sort != q.Sort || c.Desc != q.Desc {
			return nil, fmt.Errorf("cursor: made for sort=%s order=%s; pass the same sort and order", c.Sort, orderName(c.Desc))
		}
		q.After = c
	}
	return q, nil
}

func orderName(desc bool) string {
	if desc {
		return "desc"
	}
	return "asc"
}

// sortKey is the record's key in a sort order.
func sortKey(sort string, notBefore, notAfter int64) int64 {
	if sort == SortIssued {
		return notBefore
	}
	return notAfter
}

// Page is one page of GET /certificates.
type Page struct {
	Certificates []View `json:"certificates"`
	NextCursor   string `json:"nextCursor,omitempty"`
}

// View is a record as the API shows it, with its status at the time of
// the request.
type View struct {
	Record
	Status string `json:"status"`
	PEM    string `json:"pem,omitempty"`
}
