package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/stepfort/stepfort/bench/internal/onoff"
	"github.com/stepfort/stepfort/provisioners/billing"
)

// issuance runs the daemon with billing off and on, alternating, and prints
// the sign throughput of each run and the on/off ratio of the medians.
func issuance(ctx context.Context, o *options) error {
	bin, dir, csrs, done, err := onoff.Prepare(ctx, "stepfort-bench-billing", o.Options)
	if err != nil {
		return err
	}
	defer done()
	b := &onoff.Bench{
		Title: "billing", Label: "billing", Drained: "recorded by billing",
		Options: o.Options,
		Set: func(cfg map[string]any, on bool) {
			cfg["stepfort"].(map[string]any)["plugins"].(map[string]any)["billing"] = map[string]any{"enabled": on}
		},
	}
	if o.drain {
		b.Drain = waitRecorded
	}
	return b.RunEach(ctx, bin, dir, o.dbs, csrs)
}

// waitRecorded polls the report until billing has recorded want
// certificates this month.
func waitRecorded(ctx context.Context, t *onoff.Target, want int) error {
	hc := t.Client(10 * time.Second)
	return onoff.WaitCount(want, "billing recorded %d of %d certificates after 2 minutes", func() (int, error) {
		resp, err := t.Get(ctx, hc, "/api/v1/billing/report?month="+billing.MonthOf(time.Now()).String())
		if err != nil {
			return 0, err
		}
		var r billing.Report
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil {
			return 0, fmt.Errorf("report: %w", err)
		}
		return r.Total.Certificates, nil
	})
}
