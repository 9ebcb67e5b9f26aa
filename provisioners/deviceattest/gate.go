package deviceattest

import (
	"errors"
	"fmt"
	"slices"

	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Denial codes, also the subproblem code of a finalize denial
// (urn:smallstep:acme:error:<code>) and the "reason" of audit events.
const (
	CodeNotRegistered  = "device_not_registered"
	CodeDisabled       = "device_disabled"
	CodeCollection     = "device_collection_not_allowed"
	CodeLookupFailed   = "device_lookup_failed"
	CodeNoIdentifier   = "device_identifier_missing"
	CodeUnknownAccount = "device_certificate_unknown"
)

// Denial is why the gate refused a device. Error() is the text clients see
// (the ACME problem detail), so it names the device and nothing secret.
type Denial struct {
	code string
	msg  string
	err  error // the backend error for CodeLookupFailed, never shown
}

func (d *Denial) Error() string { return d.msg }

// Code is the stable reason code.
func (d *Denial) Code() string { return d.code }

// AuditStage is the stage the daemon records this refusal with in the
// audit trail (docs/audit.md): the inventory gate.
func (d *Denial) AuditStage() string { return "inventory" }

// Unwrap returns the backend error, if any.
func (d *Denial) Unwrap() error { return d.err }

func deny(code, format string, args ...any) *Denial {
	return &Denial{code: code, msg: fmt.Sprintf(format, args...)}
}

// Gate decides whether a permanent identifier belongs to a device that may
// get certificates. It reads the inventory on every call, so a change made
// on any replica takes effect at once; any read error denies.
type Gate struct {
	Inventory   *inventory.Store
	Collections []string // empty: any collection
}

// Check returns the active device that holds pid, or a *Denial.
func (g *Gate) Check(pid string) (*inventory.Device, error) {
	if pid == "" {
		return nil, deny(CodeNoIdentifier, "no device permanent identifier")
	}
	d, err := g.Inventory.ByIdentifier(pid)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return nil, deny(CodeNotRegistered, "device %s is not registered", pid)
	case err != nil:
		return nil, &Denial{code: CodeLookupFailed, msg: fmt.Sprintf("device %s could not be checked against the inventory", pid), err: err}
	case !d.Active():
		return nil, deny(CodeDisabled, "device %s is disabled", pid)
	case len(g.Collections) > 0 && !slices.Contains(g.Collections, d.Collection):
		return nil, deny(CodeCollection, "device %s is not in an allowed collection", pid)
	}
	return d, nil
}

// CheckID is Check for a device known by its inventory ID (a linked
// certificate).
func (g *Gate) CheckID(id string) (*inventory.Device, error) {
	d, err := g.Inventory.Get(id)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
		return nil, deny(CodeNotRegistered, "device %s is not registered", id)
	case err != nil:
		return nil, &Denial{code: CodeLookupFailed, msg: fmt.Sprintf("device %s could not be checked against the inventory", id), err: err}
	case !d.Active():
		return nil, deny(CodeDisabled, "device %s is disabled", id)
	case len(g.Collections) > 0 && !slices.Contains(g.Collections, d.Collection):
		return nil, deny(CodeCollection, "device %s is not in an allowed collection", id)
	}
	return d, nil
}
