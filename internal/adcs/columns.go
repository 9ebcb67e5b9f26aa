package adcs

import (
	"fmt"
	"strings"
)

// field is what a column of the export feeds in a Row.
type field int

const (
	fIgnored field = iota
	fRequestID
	fSerial
	fDisposition
	fNotBefore
	fNotAfter
	fRevokedEffective
	fRevokedWhen
	fReason
	fCommonName
	fRequestCommonName
	fTemplate
	fRawCertificate
	numFields
)

// readColumns are the -out names that feed a Row (lower case; certutil
// column names are case-insensitive). Several names may feed one field.
var readColumns = map[string]field{
	"request.requestid":            fRequestID,
	"requestid":                    fRequestID,
	"serialnumber":                 fSerial,
	"request.disposition":          fDisposition,
	"disposition":                  fDisposition,
	"notbefore":                    fNotBefore,
	"notafter":                     fNotAfter,
	"request.revokedeffectivewhen": fRevokedEffective,
	"revokedeffectivewhen":         fRevokedEffective,
	"request.revokedwhen":          fRevokedWhen,
	"revokedwhen":                  fRevokedWhen,
	"request.revokedreason":        fReason,
	"revokedreason":                fReason,
	"commonname":                   fCommonName,
	"request.commonname":           fRequestCommonName,
	"certificatetemplate":          fTemplate,
	"rawcertificate":               fRawCertificate,
}

// ignoredColumns are the other columns of the ADCS request and certificate
// tables: allowed in -out, not read. "ext:OID" and "attrib:Name" are too.
var ignoredColumns = []string{
	"Request.RawRequest", "Request.RawArchivedKey", "Request.KeyRecoveryHashes",
	"Request.RawOldCertificate", "Request.RequestAttributes", "Request.RequestType",
	"Request.RequestFlags", "Request.StatusCode", "Request.DispositionMessage",
	"Request.SubmittedWhen", "Request.ResolvedWhen", "Request.RequesterName",
	"Request.CallerName", "Request.SignerPolicies", "Request.SignerApplicationPolicies",
	"Request.Officer", "Request.DistinguishedName", "Request.RawName", "Request.Country",
	"Request.Organization", "Request.OrgUnit", "Request.Locality", "Request.State",
	"Request.Title", "Request.GivenName", "Request.Initials", "Request.SurName",
	"Request.DomainComponent", "Request.EMail", "Request.StreetAddress",
	"Request.UnstructuredName", "Request.UnstructuredAddress", "Request.DeviceSerialNumber",
	"Request.AttestationChallenge", "Request.EndorsementKeyHash",
	"Request.EndorsementCertificateHash", "Request.RawPrecertificate",
	"CertificateHash", "EnrollmentFlags", "GeneralFlags", "PrivateKeyFlags", "IssuerNameID",
	"SubjectKeyIdentifier", "RawPublicKey", "PublicKeyLength", "PublicKeyAlgorithm",
	"RawPublicKeyAlgorithmParameters", "PublishExpiredCertInCRL", "UPN", "DistinguishedName",
	"RawName", "Country", "Organization", "OrgUnit", "Locality", "State", "Title",
	"GivenName", "Initials", "SurName", "DomainComponent", "EMail", "StreetAddress",
	"UnstructuredName", "UnstructuredAddress", "DeviceSerialNumber",
}

var ignoredSet = func() map[string]bool {
	m := make(map[string]bool, len(ignoredColumns))
	for _, c := range ignoredColumns {
		m[strings.ToLower(c)] = true
	}
	return m
}()

// requiredFields must be in every export the importer reads.
var requiredFields = []struct {
	f    []field
	name string
}{
	{[]field{fSerial}, "SerialNumber"},
	{[]field{fDisposition}, "Request.Disposition"},
	{[]field{fNotAfter}, "NotAfter"},
	{[]field{fRevokedEffective, fRevokedWhen}, "Request.RevokedEffectiveWhen (or Request.RevokedWhen)"},
	{[]field{fReason}, "Request.RevokedReason"},
}

// layout maps the positions of the -out columns to Row fields.
type layout struct {
	names  []string // the -out names as given
	fields []field  // per position
	has    [numFields]bool

	rowsSeen int // text mode: rows read so far
	headers  int // text mode: "Row N:" headers seen
}

func newLayout(columns []string) (*layout, error) {
	if columns == nil {
		columns = DefaultColumns
	}
	l := &layout{names: columns, fields: make([]field, len(columns))}
	for i, name := range columns {
		key := strings.ToLower(strings.TrimSpace(name))
		f, ok := readColumns[key]
		switch {
		case ok:
		case ignoredSet[key], strings.HasPrefix(key, "ext:"), strings.HasPrefix(key, "attrib:"):
			f = fIgnored
		default:
			return nil, fmt.Errorf("column %d %q is not a certutil -view column this reader knows; known: %s, %s, or ext:OID and attrib:Name",
				i+1, name, strings.Join(readNames(), ", "), strings.Join(ignoredColumns, ", "))
		}
		if l.has[f] {
			f = fIgnored // e.g. both RequestID and Request.RequestID: the first one is read
		}
		l.fields[i] = f
		l.has[f] = true
	}
	for _, r := range requiredFields {
		found := false
		for _, f := range r.f {
			found = found || l.has[f]
		}
		if !found {
			return nil, fmt.Errorf("the -out columns %s lack %s, which the import needs", strings.Join(columns, ","), r.name)
		}
	}
	return l, nil
}

// readNames lists the columns that feed a Row, in their canonical spelling.
func readNames() []string {
	return []string{"Request.RequestID", "RequestID", "SerialNumber", "Request.Disposition",
		"Disposition", "NotBefore", "NotAfter", "Request.RevokedEffectiveWhen",
		"RevokedEffectiveWhen", "Request.RevokedWhen", "RevokedWhen", "Request.RevokedReason",
		"RevokedReason", "CommonName", "Request.CommonName", "CertificateTemplate", "RawCertificate"}
}

// expected describes the column list for count-mismatch errors.
func (l *layout) expected() string {
	return fmt.Sprintf("%d (the -out columns %s)", len(l.names), strings.Join(l.names, ","))
}
