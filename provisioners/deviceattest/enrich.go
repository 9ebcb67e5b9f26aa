package deviceattest

import (
	"context"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// EnrichProvisioners implements plugins.SignEnricher: device data is offered
// to the templates of the gated ACME provisioners and the account
// provisioners.
func (p *Plugin) EnrichProvisioners() []string { return p.SignProvisioners() }

// EnrichSign implements plugins.SignEnricher. Templates of those
// provisioners read the device's inventory record as
// {{ .Webhooks.deviceAttest.<key> }} (see docs/deviceattest.md). A device
// that cannot be found denies issuance, as the gate would.
func (p *Plugin) EnrichSign(_ context.Context, req plugins.SignRequest) (map[string]any, error) {
	var dev *inventory.Device
	var err error
	switch {
	case p.gated(req.Provisioner):
		dev, err = p.gate.Check(req.PermanentIdentifier)
	case p.account(req.Provisioner):
		var x *x5cDevice
		if x, err = p.deviceOfX5C(req.X5CCertificate); err == nil {
			dev, err = p.gate.CheckID(x.deviceID)
		}
	default:
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return TemplateData(dev), nil
}

// TemplateData is what templates see of a device.
func TemplateData(d *inventory.Device) map[string]any {
	metadata := map[string]string{}
	for k, v := range d.Metadata {
		metadata[k] = v
	}
	return map[string]any{
		"id":          d.ID,
		"name":        d.Name,
		"type":        d.Type,
		"os":          d.OS,
		"serial":      d.Serial,
		"collection":  d.Collection,
		"owner":       d.Owner,
		"source":      d.Source,
		"identifiers": d.Identifiers,
		"metadata":    metadata,
	}
}
