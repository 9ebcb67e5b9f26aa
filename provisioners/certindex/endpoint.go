package certindex

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/internal/endpoint"
	"github.com/stepfort/stepfort/plugins"
)

// The Endpoint of a certificate is computed with billing's published rule
// (docs/billing.md, "The rules"), not read from the billing plugin: the
// index does not depend on billing being enabled, and billing's tables stay
// its own. The subject key and the IDs are internal/endpoint, the code
// billing runs, so the same certificate gets billing's ID.
// TestEndpointMatchesBilling holds the two plugins' use of it together.

// lineageEndpointID is the Endpoint started by a /sign certificate.
func lineageEndpointID(serial string) string { return endpoint.LineageID(serial) }

// neverRenews: flows that re-enrol instead of renewing are grouped by
// subject whatever their claims.
var neverRenews = map[string]bool{"ACME": true, "SCEP": true}

// errNoAuthority: the grouping of a provisioner with claims needs the
// running authority.
var errNoAuthority = errors.New("authority not available")

// bySubject reports whether the provisioner groups by subject: ACME and
// SCEP always, others when their effective disableRenewal claim is true.
// a may be nil (reindex without a running CA): then only the type decides
// and errNoAuthority is returned for the others.
func bySubject(a *authority.Authority, ref plugins.ProvisionerRef) (bool, error) {
	if neverRenews[strings.ToUpper(ref.Type)] {
		return true, nil
	}
	if a == nil {
		return false, errNoAuthority
	}
	var prov provisioner.Interface
	if ref.ID != "" {
		prov, _ = a.LoadProvisionerByID(ref.ID)
	}
	if prov == nil && ref.Name != "" {
		prov, _ = a.LoadProvisionerByName(ref.Name)
	}
	if prov == nil {
		return false, fmt.Errorf("provisioner %q (%s) not found", ref.Name, ref.ID)
	}
	if neverRenews[strings.ToUpper(prov.GetType().String())] {
		return true, nil
	}
	var global *provisioner.Claims
	if cfg := a.GetConfig(); cfg != nil && cfg.AuthorityConfig != nil {
		global = cfg.AuthorityConfig.Claims
	}
	return endpoint.DisableRenewal(prov, global)
}

// signEndpoint is the Endpoint of a certificate that starts its own
// lineage or joins its subject's Endpoint (a /sign, ACME or SCEP issuance).
// grouping says whether a provisioner groups by subject.
type grouping func(ref plugins.ProvisionerRef) (bool, error)

// authorityGrouping asks the current authority (it changes on reload).
func authorityGrouping(a func() *authority.Authority) grouping {
	return func(ref plugins.ProvisionerRef) (bool, error) { return bySubject(a(), ref) }
}

// typeGrouping knows ACME and SCEP only (reindex without a running CA).
func typeGrouping(ref plugins.ProvisionerRef) (bool, error) { return bySubject(nil, ref) }

func signEndpoint(g grouping, cert *x509.Certificate, ref plugins.ProvisionerRef) (string, error) {
	subject, err := g(ref)
	if err != nil {
		return "", err
	}
	if key := endpoint.SubjectKey(cert); subject && key != "" {
		return endpoint.SubjectID(ref, key), nil
	}
	return lineageEndpointID(cert.SerialNumber.String()), nil
}
