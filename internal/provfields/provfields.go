// Package provfields reads the exported Options and Claims fields of
// upstream's provisioner types. Every upstream type has them, but no
// interface exposes them; a type switch names each type instead of reaching
// in by reflection, so a new upstream type is a compile-visible gap (it
// gets ErrUnsupported, never a guess).
package provfields

import (
	"errors"
	"fmt"

	"github.com/smallstep/certificates/authority/provisioner"
)

// ErrUnsupported is returned for a provisioner type this package does not
// know, or one without provisioner options (SSHPOP).
var ErrUnsupported = errors.New("provisioner type has no options")

// Options returns the provisioner's *Options, creating it when nil, so the
// caller can add to it (webhooks).
func Options(p provisioner.Interface) (*provisioner.Options, error) {
	f, err := optionsField(p)
	if err != nil {
		return nil, err
	}
	if *f == nil {
		*f = &provisioner.Options{}
	}
	return *f, nil
}

// Webhooks returns the provisioner's configured webhooks without changing
// the provisioner.
func Webhooks(p provisioner.Interface) []*provisioner.Webhook {
	f, err := optionsField(p)
	if err != nil || *f == nil {
		return nil
	}
	return (*f).Webhooks
}

// optionsField is the address of the provisioner's Options field.
func optionsField(p provisioner.Interface) (**provisioner.Options, error) {
	var f **provisioner.Options
	switch v := p.(type) {
	case *provisioner.JWK:
		f = &v.Options
	case *provisioner.OIDC:
		f = &v.Options
	case *provisioner.GCP:
		f = &v.Options
	case *provisioner.AWS:
		f = &v.Options
	case *provisioner.Azure:
		f = &v.Options
	case *provisioner.ACME:
		f = &v.Options
	case *provisioner.X5C:
		f = &v.Options
	case *provisioner.K8sSA:
		f = &v.Options
	case *provisioner.SCEP:
		f = &v.Options
	case *provisioner.Nebula:
		f = &v.Options
	default:
		return nil, fmt.Errorf("provisioner %q (%T): %w", p.GetName(), p, ErrUnsupported)
	}
	return f, nil
}

// Claims returns the provisioner's own claims block (nil when ca.json sets
// none), not merged with the authority's.
func Claims(p provisioner.Interface) *provisioner.Claims {
	switch v := p.(type) {
	case *provisioner.JWK:
		return v.Claims
	case *provisioner.OIDC:
		return v.Claims
	case *provisioner.GCP:
		return v.Claims
	case *provisioner.AWS:
		return v.Claims
	case *provisioner.Azure:
		return v.Claims
	case *provisioner.ACME:
		return v.Claims
	case *provisioner.X5C:
		return v.Claims
	case *provisioner.K8sSA:
		return v.Claims
	case *provisioner.SCEP:
		return v.Claims
	case *provisioner.Nebula:
		return v.Claims
	case *provisioner.SSHPOP:
		return v.Claims
	}
	return nil
}
