package deviceattest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/provisioners/inventory"
)

// Actor names the plugin in the record of the revocations it makes.
const Actor = "plugin:deviceAttest"

// revokeWorkers bounds concurrent revocations of one device.
const revokeWorkers = 8

// ObserveDevice implements plugins.DeviceObserver: a device that is
// disabled or gone loses every unexpired certificate linked to it. The
// event says what was true when it was recorded; the device is read again
// and the decision rests on its state now, so a device disabled and
// enabled again before delivery keeps its certificates. A read error is
// returned, and the daemon delivers the event again later.
//
// It runs on the daemon's event delivery goroutine, off the admin request
// that made the change.
func (p *Plugin) ObserveDevice(ctx context.Context, ev plugins.DeviceEvent) error {
	d, err := p.gate.Inventory.Get(ev.DeviceID)
	switch {
	case errors.Is(err, inventory.ErrNotFound):
	case err != nil:
		return fmt.Errorf("device event %s: %w", ev.ID, err)
	case d.Active():
		p.log.Info("device active again; certificates kept", "event", "deviceattest.device_reactivated", "device", ev.DeviceID, "deviceEvent", ev.ID)
		return nil
	}
	name := "deviceattest.device_disabled"
	if ev.Kind == plugins.DeviceRemoved {
		name = "deviceattest.device_removed"
	}
	p.log.Info("device deactivated", "event", name, "device", ev.DeviceID, "deviceEvent", ev.ID)
	return p.RevokeDevice(ctx, ev.DeviceID)
}

// RevokeDevice revokes every unexpired, unrevoked certificate linked to a
// device. It is idempotent.
func (p *Plugin) RevokeDevice(ctx context.Context, deviceID string) error {
	dc, err := p.links.DeviceCerts(deviceID)
	if err != nil {
		return err
	}
	now := p.host.Now()
	var serials []string
	for _, c := range dc.Certs {
		if !c.Revoked && c.NotAfter.After(now) {
			serials = append(serials, c.Serial)
		}
	}
	if len(serials) == 0 {
		return nil
	}
	return p.revokeSerials(ctx, deviceID, serials)
}

// revokeSerials revokes serials with at most revokeWorkers at a time (a
// device can hold many account certificates) and marks them revoked in the
// device's list. deviceID is "" for a certificate linked to no device.
func (p *Plugin) revokeSerials(ctx context.Context, deviceID string, serials []string) error {
	var (
		mu    sync.Mutex
		done  []string
		errs  []error
		wg    sync.WaitGroup
		queue = make(chan string)
	)
	start := time.Now()
	for range min(revokeWorkers, len(serials)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for serial := range queue {
				err := p.revokeOne(ctx, deviceID, serial)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					done = append(done, serial)
				}
				mu.Unlock()
			}
		}()
	}
	for _, s := range serials {
		queue <- s
	}
	close(queue)
	wg.Wait()
	if deviceID != "" {
		if err := p.links.MarkRevoked(deviceID, done); err != nil {
			errs = append(errs, err)
		}
	}
	p.log.Info("device certificates revoked", "event", "deviceattest.device_revoked", "device", deviceID,
		"revoked", len(done), "failed", len(errs), "duration", time.Since(start).String())
	return errors.Join(errs...)
}

// revokeOne revokes one certificate through the host, so the revocation
// lands in upstream's revoked table (CRL, OCSP, passive revocation), fires
// the revoked certificate event and names this plugin as the actor. A
// certificate revoked already (by another replica, the sweep, an admin)
// counts as done.
func (p *Plugin) revokeOne(ctx context.Context, deviceID, serial string) error {
	err := p.host.Revoke(ctx, plugins.RevokeRequest{
		Serial:     serial,
		ReasonCode: p.cfg.RevocationReasonCode,
		Reason:     p.cfg.RevocationReason,
		Actor:      Actor,
	})
	switch {
	case errors.Is(err, plugins.ErrAlreadyRevoked):
		return nil
	case err != nil:
		return fmt.Errorf("revoke %s: %w", serial, err)
	}
	p.log.Info("certificate revoked for device", "event", "deviceattest.revoked", "device", deviceID, "serial", serial,
		"reasonCode", p.cfg.RevocationReasonCode)
	return nil
}

// sweepLoop is the safety net behind device events: at start and every
// SweepInterval it revokes what they may have missed (a device disabled by
// a store that records no events or before events existed, a revocation
// that keeps failing), then purges links that describe nothing live.
func (p *Plugin) sweepLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.SweepInterval.Duration)
	defer t.Stop()
	for {
		if err := p.Sweep(ctx); err != nil && ctx.Err() == nil {
			p.log.Error("device revocation sweep", "event", "deviceattest.sweep_failed", "error", err)
		}
		if err := p.links.Purge(ctx, p.host.Now()); err != nil && ctx.Err() == nil {
			p.log.Error("device link purge", "event", "deviceattest.purge_failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep revokes the certificates of every linked device that is disabled
// or no longer in the inventory.
func (p *Plugin) Sweep(ctx context.Context) error {
	ids, err := p.links.Devices()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d, err := p.gate.Inventory.Get(id)
		if err != nil && !errors.Is(err, inventory.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		if err == nil && d.Active() {
			continue
		}
		if err := p.RevokeDevice(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
