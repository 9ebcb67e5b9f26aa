package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/stepfort/stepfort/bench/internal/onoff"
)

// issuance runs the daemon with the index off and on, alternating, and
// prints the sign throughput of each run and the on/off ratio of the
// medians.
func issuance(ctx context.Context, o *options) error {
	bin, dir, csrs, done, err := onoff.Prepare(ctx, "stepfort-bench-certindex", o.Options)
	if err != nil {
		return err
	}
	defer done()
	b := &onoff.Bench{
		Title: "certificate index", Label: "index", Drained: "indexed",
		Options: o.Options,
		Set: func(cfg map[string]any, on bool) {
			cfg["stepfort"].(map[string]any)["plugins"].(map[string]any)["certIndex"] = map[string]any{"enabled": on}
		},
		Drain: waitIndexed,
	}
	return b.Run(ctx, bin, dir, "bbolt", csrs)
}

// waitIndexed counts the rows of a JSON-lines export until the index holds
// want certificates.
func waitIndexed(ctx context.Context, t *onoff.Target, want int) error {
	hc := t.Client(30 * time.Second)
	return onoff.WaitCount(want, "the index holds %d of %d certificates after 2 minutes", func() (int, error) {
		resp, err := t.Get(ctx, hc, "/api/v1/certificates/export?format=jsonl")
		if err != nil {
			return 0, err
		}
		n := 0
		dec := json.NewDecoder(resp.Body)
		for {
			var v map[string]any
			if err := dec.Decode(&v); err != nil {
				break
			}
			n++
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("export: HTTP %d", resp.StatusCode)
		}
		return n, nil
	})
}
