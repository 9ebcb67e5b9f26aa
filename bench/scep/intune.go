package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/stepfort/stepfort/bench/internal/benchproc"
	"github.com/stepfort/stepfort/bench/internal/signload"
	"github.com/stepfort/stepfort/provisioners/dynamicscep"
	"github.com/stepfort/stepfort/provisioners/dynamicscep/intunemock"
)

// The Intune round trip: stepfort with the dynamicScep "intune" block
// pointed at intunemock.Mock (Entra ID token, Graph discovery and
// ScepActions on one loopback TLS server, in this process), so an
// enrollment with a challenge that is not one of ours costs a
// validateRequest (plus a token and discovery once) and a
// successNotification.

const (
	intuneTenant   = "bench.onmicrosoft.com"
	intuneClientID = "00000000-0000-0000-0000-0000000bec4e"
	intuneSecret   = "bench-client-secret"
	intuneWarmup   = 5 // Intune enrollments before the clock: token and discovery
)

// intuneResult compares one-by-one enrollments with an API challenge and
// an Intune challenge on the same server, then Intune enrollments under
// the benchmark's concurrency.
type intuneResult struct {
	api, intune, load   *signload.Result
	validates, notifies int
	variant             string // the stepfort plugin set of the run
}

// measureIntune runs one stepfort (plugin set v) with Intune validation
// against the mock.
func measureIntune(ctx context.Context, o *options, c *ca, v variant, bin, dir string, es []enrollee) (*intuneResult, error) {
	k := min(50, len(es)/5)
	if k < 1 || len(es) < 2*k+intuneWarmup+1 {
		return nil, fmt.Errorf("too few enrollments (%d) for the Intune measurement", len(es))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	mock := intunemock.New(intuneTenant, intuneClientID)
	defer mock.Server.Close()
	mock.Secret = intuneSecret
	intuneChallenges := make([]string, len(es)-k)
	for i := range intuneChallenges {
		intuneChallenges[i] = fmt.Sprintf("INTUNE-BENCH-%06d", i)
		mock.Answers[intuneChallenges[i]] = intunemock.Success
	}
	port, httpPort, err := benchproc.TwoPorts()
	if err != nil {
		return nil, err
	}
	cfg, err := c.runConfig(dir, v, port, httpPort)
	if err != nil {
		return nil, err
	}
	if err := addIntune(cfg, dir, mock); err != nil {
		return nil, err
	}
	s, err := c.start(ctx, "stepfort-intune", bin, true, cfg, dir, port)
	if err != nil {
		return nil, err
	}
	defer s.Stop()
	hc := newClient(c.roots, o.workers)
	defer hc.Transport.(*http.Transport).CloseIdleConnections()
	scepURL := fmt.Sprintf("http://127.0.0.1:%d/scep/%s", httpPort, scepProvisioner)
	ra, err := getRA(ctx, hc, scepURL)
	if err != nil {
		return nil, err
	}
	_, apiChallenges, err := createChallenges(ctx, hc, s.URL, c.adminToken, k, o.workers)
	if err != nil {
		return nil, err
	}
	apiReqs, err := buildRequests(es[:k], apiChallenges, ra)
	if err != nil {
		return nil, err
	}
	intuneReqs, err := buildRequests(es[k:], intuneChallenges, ra)
	if err != nil {
		return nil, err
	}
	res := &intuneResult{variant: v.name}
	phases := []struct {
		out     **signload.Result
		reqs    []request
		workers int
	}{
		{nil, intuneReqs[:intuneWarmup], 1},
		{&res.api, apiReqs, 1},
		{&res.intune, intuneReqs[intuneWarmup : intuneWarmup+k], 1},
		{&res.load, intuneReqs[intuneWarmup+k:], o.workers},
	}
	for _, p := range phases {
		r := sendAll(ctx, hc, scepURL, p.reqs, p.workers)
		if r.Failed > 0 {
			return nil, fmt.Errorf("%d of %d Intune-mode enrollments failed: %v", r.Failed, len(p.reqs), r.Errs)
		}
		if p.out != nil {
			*p.out = r
		}
	}
	time.Sleep(500 * time.Millisecond) // notifications are sent after the CertRep
	res.validates, res.notifies = len(mock.Calls("validateRequest")), len(mock.Calls("successNotification"))
	return res, s.Check()
}

// addIntune adds the "intune" block, pointed at mock, to the dynamicScep
// plugin of the ca.json at path, for its "scep" provisioner.
func addIntune(path, dir string, mock *intunemock.Mock) error {
	roots, secret := filepath.Join(dir, "intune-roots.pem"), filepath.Join(dir, "intune-secret")
	if err := os.WriteFile(roots, mock.RootsPEM(), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(secret, []byte(intuneSecret), 0o600); err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	sf, _ := cfg["stepfort"].(map[string]any)
	plugins, _ := sf["plugins"].(map[string]any)
	ds, ok := plugins[dynamicscep.Name].(map[string]any)
	if !ok {
		return fmt.Errorf("%s: no stepfort.plugins.%s", path, dynamicscep.Name)
	}
	ds["intune"] = map[string]any{
		"provisioners": []string{scepProvisioner}, "tenant": intuneTenant, "clientID": intuneClientID,
		"clientSecretFile": secret, "loginHost": mock.Host(), "graphHost": mock.Host(), "rootsFile": roots,
	}
	if b, err = json.MarshalIndent(cfg, "", "\t"); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// print writes the Intune lines of the report; stepfortRate is the median
// enrollments/s with API challenges.
func (r *intuneResult) print(workers int, stepfortRate float64) {
	a, i := r.api.Percentile(50), r.intune.Percentile(50)
	fmt.Printf("Intune round trip (IntuneMock on loopback TLS, no network latency): one at a time, p50 %.1fms with an API challenge vs %.1fms with an Intune challenge: +%.1fms per enrollment (validateRequest; successNotification after the CertRep); Intune p99 %.1fms\n",
		ms(a), ms(i), ms(i-a), ms(r.intune.Percentile(99)))
	fmt.Printf("Intune enrollments with %d workers: %.1f enrollments/s (%.2fx %s with API challenges), p99 %.1fms; mock saw %d validateRequest, %d successNotification\n",
		workers, r.load.PerSecond(), r.load.PerSecond()/stepfortRate, r.variant, ms(r.load.Percentile(99)), r.validates, r.notifies)
}
