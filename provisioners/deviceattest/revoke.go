package deviceattest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/stepfort/stepfort/provisioners/inventory"
)

// revokeWorkers bounds concurrent revocations of one device.
const revokeWorkers = 8

// deviceDeactivated is the inventory listener: a disabled or removed device
// loses every unexpired certificate linked to it.
func (p *Plugin) deviceDeactivated(ctx context.Context, c inventory.DeviceChange) {
	st := p.state.Load()
	if st == nil || c.Device == nil {
		return
	}
	event := "deviceattest.device_disabled"
	if c.Removed {
		event = "deviceattest.device_removed"
	}
	st.log.Info("device deactivated", "event", event, "device", c.Device.ID, "identifiers", c.Device.Identifiers)
	if err := p.revokeDevice(ctx, st, c.Device.ID); err != nil {
		// The sweep retries.
		st.log.Error("revoke certificates of device", "event", "deviceattest.revoke_failed", "device", c.Device.ID, "error", err)
	}
}

// RevokeDevice revokes every unexpired, unrevoked certificate linked to a
// device. It is idempotent.
func (p *Plugin) RevokeDevice(ctx context.Context, deviceID string) error {
	st := p.state.Load()
	if st == nil {
		return errNotStarted
	}
	return p.revokeDevice(ctx, st, deviceID)
}

func (p *Plugin) revokeDevice(ctx context.Context, st *state, deviceID string) error {
	dc, err := st.links.DeviceCerts(deviceID)
	if err != nil {
		return err
	}
	now := st.now()
	var serials []string
	for _, c := range dc.Certs {
		if !c.Revoked && c.NotAfter.After(now) {
			serials = append(serials, c.Serial)
		}
	}
	if len(serials) == 0 {
		return nil
	}
	return p.revokeSerials(ctx, st, deviceID, serials)
}

// revokeSerials revokes through upstream's Authority.Revoke, so the
// revocation lands in revoked_x509_certs (CRL, OCSP, passive revocation)
// and fires the revoked certificate event.
func (p *Plugin) revokeSerials(ctx context.Context, st *state, deviceID string, serials []string) error {
	auth := st.auth()
	if auth == nil {
		return errors.New("no authority")
	}
	ctx = provisioner.NewContextWithMethod(ctx, provisioner.RevokeMethod)
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
				err := p.revokeOne(ctx, auth, serial)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					done = append(done, serial)
				}
				mu.Unlock()
				if err == nil {
					st.log.Info("certificate revoked for device", "event", "deviceattest.revoked", "device", deviceID, "serial", serial,
						"reasonCode", p.cfg.RevocationReasonCode)
				}
			}
		}()
	}
	for _, s := range serials {
		queue <- s
	}
	close(queue)
	wg.Wait()
	if deviceID != "" {
		if err := st.links.MarkRevoked(deviceID, done); err != nil {
			errs = append(errs, err)
		}
	}
	st.log.Info("device certificates revoked", "event", "deviceattest.device_revoked", "device", deviceID,
		"revoked", len(done), "failed", len(errs), "duration", time.Since(start).String())
	return errors.Join(errs...)
}

func (p *Plugin) revokeOne(ctx context.Context, auth *authority.Authority, serial string) error {
	revoked, err := auth.IsRevoked(serial)
	if err != nil {
		return fmt.Errorf("revocation status of %s: %w", serial, err)
	}
	if revoked {
		return nil
	}
	crt, err := auth.GetDatabase().GetCertificate(serial)
	if err != nil {
		return fmt.Errorf("read certificate %s: %w", serial, err)
	}
	// Upstream's Revoke knows token, mTLS and ACME revocations; an
	// administrative revocation holding the certificate is the mTLS path
	// (no token to verify), so MTLS is set.
	err = auth.Revoke(ctx, &authority.RevokeOptions{
		Serial:     serial,
		Reason:     p.cfg.RevocationReason,
		ReasonCode: p.cfg.RevocationReasonCode,
		MTLS:       true,
		Crt:        crt,
	})
	if err != nil {
		if r, _ := auth.IsRevoked(serial); r {
			return nil // revoked concurrently (another replica, the sweep)
		}
		return fmt.Errorf("revoke %s: %w", serial, err)
	}
	return nil
}

// sweepLoop catches up revocations the listener missed: devices disabled by
// an import, by another replica that crashed mid-way, or while the database
// was unavailable.
func (p *Plugin) sweepLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.SweepInterval.Duration)
	defer t.Stop()
	for {
		if st := p.state.Load(); st != nil {
			if err := p.Sweep(ctx); err != nil && ctx.Err() == nil {
				st.log.Error("device revocation sweep", "event", "deviceattest.sweep_failed", "error", err)
			}
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
	st := p.state.Load()
	if st == nil {
		return errNotStarted
	}
	ids, err := st.links.Devices()
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d, err := st.gate.Inventory.Get(id)
		if err != nil && !errors.Is(err, inventory.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		if err == nil && d.Active() {
			continue
		}
		if err := p.revokeDevice(ctx, st, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
