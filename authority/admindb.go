package authority

import (
	"context"
	"crypto/x509"
	"net/url"
	"slices"
	"strings"

	upstream "github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/admin"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/errs"
	"github.com/smallstep/linkedca"
	"google.golang.org/protobuf/proto"

	"github.com/stepfort/stepfort/internal/provfields"
)

// gatedAdminDB is upstream's admin database with the daemon's in-process
// webhooks. With enableAdmin, upstream loads provisioners from this
// database (at start, on reload, after every admin API change) instead of
// ca.json, so the webhooks injectSignWebhooks adds to ca.json's list would
// never reach them. Every provisioner handed to upstream gets this
// generation's webhooks; none is stored, so the database keeps what admins
// wrote and a changed plugin configuration takes effect on the next load.
type gatedAdminDB struct {
	admin.DB
	webhooks func(name string) []*linkedca.Webhook // in-process webhooks of a provisioner
}

func (g *gatedAdminDB) GetProvisioner(ctx context.Context, id string) (*linkedca.Provisioner, error) {
	p, err := g.DB.GetProvisioner(ctx, id)
	if err != nil {
		return nil, err
	}
	return g.gate(p), nil
}

func (g *gatedAdminDB) GetProvisioners(ctx context.Context) ([]*linkedca.Provisioner, error) {
	ps, err := g.DB.GetProvisioners(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*linkedca.Provisioner, len(ps))
	for i, p := range ps {
		out[i] = g.gate(p)
	}
	return out, nil
}

// CreateProvisioner stores prov without in-process webhooks and then adds
// them to prov, which upstream converts into the provisioner it serves
// right after this call (authority.StoreProvisioner).
func (g *gatedAdminDB) CreateProvisioner(ctx context.Context, prov *linkedca.Provisioner) error {
	stored := stripped(prov)
	if err := g.DB.CreateProvisioner(ctx, stored); err != nil {
		return err
	}
	prov.Id, prov.AuthorityId = stored.Id, stored.AuthorityId
	prov.Webhooks = append(external(prov.Webhooks), g.webhooks(prov.GetName())...)
	return nil
}

// UpdateProvisioner stores prov without in-process webhooks. Upstream has
// already put the updated provisioner, built from the admin's request, into
// its collection. Upstream's own admin API sends back the webhooks it read
// through GetProvisioner, so they are normally there. A request without
// them cannot be mended here: upstream holds its admin lock, and reloading
// the collection needs it (for SCEP provisioners) or races without it. So
// the last enforcer (gateIntact) refuses to sign for such a provisioner
// until the next start or reload gives it its webhooks again.
func (g *gatedAdminDB) UpdateProvisioner(ctx context.Context, prov *linkedca.Provisioner) error {
	return g.DB.UpdateProvisioner(ctx, stripped(prov))
}

// gate returns a copy of p with this generation's in-process webhooks in
// place of any stored ones.
func (g *gatedAdminDB) gate(p *linkedca.Provisioner) *linkedca.Provisioner {
	c := proto.Clone(p).(*linkedca.Provisioner)
	c.Webhooks = append(external(c.Webhooks), g.webhooks(c.GetName())...)
	return c
}

// stripped is a copy of p without in-process webhooks: they are the
// daemon's, rebuilt for every generation, never the admin's.
func stripped(p *linkedca.Provisioner) *linkedca.Provisioner {
	c := proto.Clone(p).(*linkedca.Provisioner)
	c.Webhooks = external(c.Webhooks)
	return c
}

// external filters out webhooks answered in-process.
func external(whs []*linkedca.Webhook) []*linkedca.Webhook {
	return slices.DeleteFunc(slices.Clone(whs), func(w *linkedca.Webhook) bool { return isInternal(w.GetUrl()) })
}

func isInternal(u string) bool {
	pu, err := url.Parse(u)
	return err == nil && strings.EqualFold(pu.Host, internalHost)
}

// linkedWebhooks returns the in-process webhooks a provisioner named name
// gets in a generation with these capabilities, in upstream's admin
// database form.
func (c *capabilities) linkedWebhooks(name string) []*linkedca.Webhook {
	var out []*linkedca.Webhook
	if gated(name, c.signAuthorizers) {
		out = append(out, &linkedca.Webhook{Id: signWebhookName, Name: signWebhookName, Url: signWebhookURL(name),
			Kind: linkedca.Webhook_AUTHORIZING, CertType: linkedca.Webhook_X509})
	}
	for _, e := range c.enrichers {
		if enriches(e, name) {
			out = append(out, &linkedca.Webhook{Id: e.name, Name: e.name, Url: enrichWebhookURL(e.name, name),
				Kind: linkedca.Webhook_ENRICHING, CertType: linkedca.Webhook_X509})
		}
	}
	// SCEP webhooks only reach SCEP provisioners: upstream's SCEP
	// controllers are the only ones that read those kinds.
	for _, wh := range scepWebhooks(c.scep, name) {
		out = append(out, &linkedca.Webhook{Id: wh.name, Name: wh.name, Url: wh.url,
			Kind: linkedca.Webhook_Kind(linkedca.Webhook_Kind_value[wh.kind]), CertType: linkedca.Webhook_X509})
	}
	return out
}

// gateIntact is the last X.509 enforcer when plugins gate provisioners:
// it refuses to sign for a gated provisioner whose live definition lacks
// the in-process webhook that gates it (AUTHORIZING for a SignAuthorizer,
// SCEPCHALLENGE for a SCEP validator), so no path by which a provisioner
// enters upstream (ca.json, the admin database, an admin API change not
// yet reloaded) can leave it ungated. The enforcer sees the template after
// upstream added its provisioner extension, which names the provisioner.
func gateIntact(caps *capabilities, auth func() *upstream.Authority) provisioner.CertificateEnforcer {
	return provisioner.CertificateEnforcerFunc(func(cert *x509.Certificate) error {
		ext, ok := provisioner.GetProvisionerExtension(cert)
		if !ok {
			return nil
		}
		want := caps.gatingWebhooks(ext.Name, ext.Type == provisioner.TypeSCEP)
		if len(want) == 0 {
			return nil
		}
		a := auth()
		if a == nil {
			return errs.Forbidden("the authority is starting")
		}
		p, err := a.LoadProvisionerByName(ext.Name)
		if err != nil {
			return errs.Forbidden("provisioner %q not found", ext.Name)
		}
		have := provfields.Webhooks(p)
		for _, w := range want {
			if !slices.ContainsFunc(have, func(h *provisioner.Webhook) bool { return h.URL == w.url && h.Kind == w.kind }) {
				return errs.Forbidden("provisioner %q is gated by a stepfort plugin but lacks its %s webhook; issuance refused", ext.Name, w.kind)
			}
		}
		return nil
	})
}

// gatingWebhooks are the in-process webhooks that gate the provisioner
// name: the AUTHORIZING one of SignAuthorizers and, for a SCEP
// provisioner, the SCEPCHALLENGE ones of SCEP validators.
func (c *capabilities) gatingWebhooks(name string, isSCEP bool) []scepWebhook {
	var out []scepWebhook
	if gated(name, c.signAuthorizers) {
		out = append(out, scepWebhook{signWebhookName, "AUTHORIZING", signWebhookURL(name)})
	}
	if isSCEP {
		for _, wh := range scepWebhooks(c.scep, name) {
			if wh.kind == "SCEPCHALLENGE" {
				out = append(out, wh)
			}
		}
	}
	return out
}
