package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/stepfort/stepfort/bench/internal/onoff"
	"github.com/stepfort/stepfort/bench/internal/signload"
)

// issuance runs the daemon with the trail off and on, alternating, and
// prints the sign throughput of each run and the on/off ratio of the
// medians.
func issuance(ctx context.Context, o *options, bin, dir string) error {
	csrs, err := signload.MakeCSRs(o.Warmup + o.N)
	if err != nil {
		return err
	}
	b := &onoff.Bench{
		Title: "audit trail", Label: "trail", Drained: "in the trail",
		Options: o.Options,
		Set: func(cfg map[string]any, on bool) {
			al := cfg["stepfort"].(map[string]any)["plugins"].(map[string]any)["auditLog"].(map[string]any)
			al["trail"] = on
		},
		Drain: waitRecorded,
	}
	return b.RunEach(ctx, bin, dir, o.dbs, csrs)
}

// waitRecorded pages through the trail's certificate.issue records until
// want are there.
func waitRecorded(ctx context.Context, t *onoff.Target, want int) error {
	hc := t.Client(10 * time.Second)
	return onoff.WaitCount(want, "the trail recorded %d of %d certificates after 2 minutes", func() (int, error) {
		got, after := 0, int64(-1)
		for {
			resp, err := t.Get(ctx, hc, fmt.Sprintf("/api/v1/audit?action=certificate.issue&limit=1000&after=%d", after))
			if err != nil {
				return 0, err
			}
			var p struct {
				Records []json.RawMessage `json:"records"`
				Next    *int64            `json:"next"`
			}
			err = json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			if err != nil {
				return 0, fmt.Errorf("audit query: %w", err)
			}
			got += len(p.Records)
			if p.Next == nil {
				return got, nil
			}
			after = *p.Next
		}
	})
}
