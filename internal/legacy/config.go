// Package legacy keeps the revocation of a CA that stepfort no longer
// issues under alive: an ADCS issuing CA whose key was brought in. It
// holds the legacy issuer's configuration, loads its certificate and key,
// and stores the certificates imported from the old CA's database with
// their status. The revocation plugin (package ha) answers OCSP and
// publishes CRLs for it; docs/design/adcs-migration.md is the design
// record.
package legacy

import "github.com/stepfort/stepfort/config"

// IssuerConfig is one entry of stepfort.plugins.revocation.legacyIssuers.
type IssuerConfig struct {
	// Name identifies the issuer in commands, the admin API and the
	// database ([A-Za-z0-9._-], at most 64 characters).
	Name string `json:"name"`
	// Certificate is the issuer's certificate (PEM file).
	Certificate string `json:"certificate"`
	// Key is the issuer's private key: a PEM file (encrypted with the
	// password in PasswordFile, or not encrypted) or a KMS key URI.
	Key          string `json:"key"`
	PasswordFile string `json:"passwordFile,omitempty"`
	// CRLURL is the CRL distribution point as the old CA's certificates
	// carry it (byte for byte, %20 and all). The base CRL is served at its
	// path on the HTTP listener.
	CRLURL string `json:"crlURL"`
	// DeltaCRLURL is the Freshest CRL URL the old CA's base CRLs carried;
	// empty: no delta CRLs. The delta CRL is served at its path.
	DeltaCRLURL string `json:"deltaCRLURL,omitempty"`
	// IDP puts an Issuing Distribution Point naming CRLURL into the CRLs.
	// Only when the old CA had one (ADCS does not by default): it changes
	// the CRL's scope for relying parties.
	IDP bool `json:"idp,omitempty"`
	// BasePeriod and DeltaPeriod are the publication periods (ADCS
	// defaults: one week and one day).
	BasePeriod  config.Duration `json:"basePeriod,omitzero"`
	DeltaPeriod config.Duration `json:"deltaPeriod,omitzero"`
}
