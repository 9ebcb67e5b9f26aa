package endpoint

import (
	"fmt"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/internal/provfields"
)

// DisableRenewal computes a provisioner's effective disableRenewal claim
// the way upstream does: the provisioner's own claim, else the global
// authority.claims (global), else upstream's default (false). A
// provisioner whose renewals are disabled groups its certificates by
// subject.
func DisableRenewal(prov provisioner.Interface, global *provisioner.Claims) (bool, error) {
	gc, err := provisioner.NewClaimer(global, config.GlobalProvisionerClaims)
	if err != nil {
		return false, fmt.Errorf("global claims: %w", err)
	}
	c, err := provisioner.NewClaimer(provfields.Claims(prov), gc.Claims())
	if err != nil {
		return false, fmt.Errorf("claims of provisioner %s: %w", prov.GetName(), err)
	}
	return c.IsDisableRenewal(), nil
}
