package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/acme"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/plugins/plugintest"
	"github.com/stepfort/stepfort/provisioners/deviceattest"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// gateOverhead is the in-process cost of the gate per device-attest-01
// challenge (gate on minus gate off), set by gateCost.
var gateOverhead time.Duration

// nopDB is the ACME database under the gate: UpdateChallenge costs nothing,
// so only the plugin's work is timed.
type nopDB struct{ acme.DB }

func (nopDB) UpdateChallenge(context.Context, *acme.Challenge) error { return nil }

// gateCost times the plugin's wrapped acme.DB.UpdateChallenge, the hook the
// server runs when a device-attest-01 challenge becomes valid, with the
// gate on ("provisioners": ["agents"]) and off ([]), against one bbolt
// inventory of `devices` devices. Blocks alternate on, off, off, on.
func gateCost(work string, devices, iters int) error {
	db, err := nosql.New("bbolt", filepath.Join(work, "gate.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	inv, err := inventory.NewStore(db, time.Now)
	if err != nil {
		return err
	}
	rows := make([]inventory.ImportRow, devices)
	for i := range rows {
		rows[i] = inventory.ImportRow{Line: i + 2, Input: inventory.DeviceInput{Serial: fmt.Sprintf("BENCH-%07d", i), Name: fmt.Sprintf("host-%07d", i), Owner: fmt.Sprintf("user%d", i%500)}}
	}
	t0 := time.Now()
	rep, err := inv.Import(rows, "bench")
	if err != nil {
		return err
	}
	if rep.Accepted != devices {
		return fmt.Errorf("import: %d of %d accepted", rep.Accepted, devices)
	}
	importTook := time.Since(t0)

	cfgOn := defaultCfg([]string{"agents"})
	cfgOff := defaultCfg([]string{})
	h := plugintest.New(db, "bbolt", "bench")
	h.Clock, h.Log = time.Now, slog.New(slog.NewTextHandler(io.Discard, nil))
	defer h.Close()
	pOn, err := deviceattest.New(cfgOn, h)
	if err != nil {
		return err
	}
	pOff, err := deviceattest.New(cfgOff, h)
	if err != nil {
		return err
	}
	ctx := acme.NewProvisionerContext(context.Background(), &provisioner.ACME{Name: "agents", Type: "ACME"})
	gOn, gOff := pOn.WrapACMEDB(nopDB{}), pOff.WrapACMEDB(nopDB{})
	pid := fmt.Sprintf("BENCH-%07d", devices/2)
	ch := &acme.Challenge{Type: acme.DEVICEATTEST01, Value: pid}
	block := func(g acme.DB) (time.Duration, error) {
		t := time.Now()
		for range iters {
			ch.Status, ch.Error = acme.StatusValid, nil
			if err := g.UpdateChallenge(ctx, ch); err != nil {
				return 0, err
			}
			if ch.Status != acme.StatusValid {
				return 0, fmt.Errorf("gate denied a registered device: %v", ch.Error)
			}
		}
		return time.Since(t) / time.Duration(iters), nil
	}
	// Denial path sanity check: an unregistered identifier is refused.
	ch.Status, ch.Value = acme.StatusValid, "BENCH-unknown"
	_ = gOn.UpdateChallenge(ctx, ch)
	if ch.Status != acme.StatusInvalid {
		return fmt.Errorf("gate on did not refuse an unregistered device")
	}
	ch.Value = pid
	var sumOn, sumOff time.Duration
	for _, on := range []bool{true, false, false, true} {
		g := gOff
		if on {
			g = gOn
		}
		d, err := block(g)
		if err != nil {
			return err
		}
		if on {
			sumOn += d
		} else {
			sumOff += d
		}
	}
	perOn, perOff := sumOn/2, sumOff/2
	gateOverhead = max(perOn-perOff, 0)
	fmt.Printf("gate (in-process): bbolt inventory of %d devices (imported in %s); wrapped acme.DB.UpdateChallenge for device-attest-01, %d calls per block, blocks A B B A:\n",
		devices, importTook.Round(time.Millisecond), iters)
	fmt.Printf("gate (in-process): gate on %s/challenge, gate off %s/challenge, gate cost %s/challenge (%.0f checks/s on one core)\n",
		perOn.Round(100*time.Nanosecond), perOff.Round(10*time.Nanosecond), gateOverhead.Round(100*time.Nanosecond), float64(time.Second)/float64(max(perOn, 1)))
	return nil
}

func defaultCfg(provs []string) *deviceattest.Config {
	var c deviceattest.Config
	// Start from the registered defaults (sweepInterval etc.).
	c.Provisioners = provs
	c.AccountProvisioners = []string{"accounts"}
	c.RevocationReasonCode = 5
	c.RevocationReason = "bench"
	c.SweepInterval.Duration = time.Hour
	return &c
}
