package e2e

import (
	"crypto/hmac"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
	"github.com/stepfort/stepfort/provisioners/billing"
)

// TestBilling drives Endpoint billing with the real step CLI, on bbolt and
// on PostgreSQL with two replicas, and checks that both backends produce the
// same Endpoints, lineages and report.
func TestBilling(t *testing.T) {
	summaries := map[string]string{}
	for _, backend := range []string{"bbolt", "postgresql"} {
		t.Run(backend, func(t *testing.T) {
			summaries[backend] = billingScenario(t, backend)
		})
	}
	if summaries["bbolt"] == "" || summaries["postgresql"] == "" {
		return // a subtest failed and said why
	}
	if summaries["bbolt"] != summaries["postgresql"] {
		t.Fatalf("bbolt and PostgreSQL disagree:\nbbolt:\n%s\npostgresql:\n%s", summaries["bbolt"], summaries["postgresql"])
	}
}

// billingScenario runs every step and returns a backend-independent summary
// of the resulting Endpoints and report.
func billingScenario(t *testing.T, backend string) string {
	var extra []string
	if backend == "postgresql" {
		pg := testenv.StartPostgres(t)
		extra = []string{"--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "billing"}
	}
	c := initCA(t, extra...)
	metricsPort := freePort(t)
	hooks := startAlertReceiver(t, []byte("webhook-secret"))
	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	if err := os.WriteFile(secretFile, []byte("webhook-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	editConfig(t, c.Config, func(m map[string]any) {
		sf := m["stepfort"].(map[string]any)
		m["metricsAddress"] = fmt.Sprintf("127.0.0.1:%d", metricsPort)
		sf["events"] = map[string]any{"retryInterval": "200ms"}
		sf["plugins"].(map[string]any)["billing"] = map[string]any{
			"alerts": map[string]any{"window": "10m", "interval": "200ms", "leaseTTL": "3s",
				"webhook": map[string]any{"url": hooks.URL, "secretFile": secretFile, "backoff": "200ms"}},
		}
		for _, p := range m["authority"].(map[string]any)["provisioners"].([]any) {
			if pm := p.(map[string]any); pm["name"] == "acme" {
				pm["claims"] = map[string]any{"disableRenewal": true}
			}
		}
	})

	// http-01 validation connects to each name: a.example and b.example must
	// resolve to this machine. The daemon's --resolver points at a tiny DNS
	// server in this test that answers every A query with 127.0.0.1, so the
	// test needs no /etc/hosts entry and no nss module.
	dns := startLoopbackDNS(t)
	acmePort := freePort(t)
	flags := []string{"--insecure", "--acme-http-port", fmt.Sprint(acmePort), "--resolver", dns}
	urls := []string{c.URL}
	serve(t, c.Config, c.Password, c.Port, flags...)
	if backend == "postgresql" {
		configB, portB := replicaConfig(t, c, "replica-b")
		editConfig(t, configB, func(m map[string]any) { m["metricsAddress"] = fmt.Sprintf("127.0.0.1:%d", freePort(t)) })
		serve(t, configB, c.Password, portB, flags...)
		urls = append(urls, fmt.Sprintf("https://localhost:%d", portB))
	} else {
		urls = append(urls, c.URL)
	}
	a, b := newStepCLI(t), newStepCLI(t)
	a.bootstrap(c, urls[0])
	b.bootstrap(c, urls[1])
	api := &billingAPI{t: t, c: c, url: urls[1], token: readToken(t, c), hc: apiClient(t, c)}
	dir := t.TempDir()
	file := func(n string) string { return filepath.Join(dir, n) }
	jwk := []string{"--provisioner", "admin", "--provisioner-password-file", c.Password}

	// Two /sign certificates for one name on a JWK provisioner: two Endpoints.
	a.must(append([]string{"ca", "certificate", "same.example", file("s1.crt"), file("s1.key")}, jwk...)...)
	b.must(append([]string{"ca", "certificate", "same.example", file("s2.crt"), file("s2.key")}, jwk...)...)
	s1, s2 := certSerial(t, file("s1.crt")), certSerial(t, file("s2.crt"))
	ep1, ep2 := api.endpointOf(s1), api.endpointOf(s2)
	if ep1 == ep2 {
		t.Fatalf("two /sign certificates share Endpoint %s", ep1)
	}

	// Renewal keeps the Endpoint, also when two replicas renew the same
	// certificate at the same moment.
	copyFile(t, file("s1.crt"), file("s1b.crt"))
	copyFile(t, file("s1.key"), file("s1b.key"))
	var wg sync.WaitGroup
	for _, r := range []struct {
		cli  *stepCLI
		name string
	}{{a, "s1"}, {b, "s1b"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := r.cli.run("ca", "renew", "--force", file(r.name+".crt"), file(r.name+".key")); err != nil {
				t.Errorf("renew %s: %v\n%s", r.name, err, out)
			}
		}()
	}
	wg.Wait()
	r1, r2 := certSerial(t, file("s1.crt")), certSerial(t, file("s1b.crt"))
	if r1 == r2 || r1 == s1 {
		t.Fatalf("renewals returned %s and %s (parent %s)", r1, r2, s1)
	}
	for _, s := range []string{r1, r2} {
		if ep := api.endpointOf(s); ep != ep1 {
			t.Fatalf("renewed certificate %s in Endpoint %s, want %s", s, ep, ep1)
		}
	}

	// Revocation ends an Endpoint at the revocation time.
	before := time.Now().Truncate(time.Second)
	b.must("ca", "revoke", "--cert", file("s2.crt"), "--key", file("s2.key"))
	after := time.Now().Add(time.Second).Truncate(time.Second)
	var ended billing.EndpointDetail
	eventually(t, 30*time.Second, func() error {
		ended = api.show(ep2)
		if ended.State != billing.StateEnded {
			return fmt.Errorf("Endpoint %s is %s after revocation", ep2, ended.State)
		}
		return nil
	})
	if ended.EndReason != billing.EndRevoked || ended.EndedAt == nil || ended.EndedAt.Before(before) || ended.EndedAt.After(after) {
		t.Fatalf("revoked Endpoint = %+v, want ended by revocation between %v and %v", ended.EndpointView, before, after)
	}

	// ACME with renewal disabled: a.example,B.example and b.example,A.example
	// are one Endpoint.
	listen := fmt.Sprintf("127.0.0.1:%d", acmePort)
	a.must("ca", "certificate", "a.example", file("acme1.crt"), file("acme1.key"), "--provisioner", "acme",
		"--san", "a.example", "--san", "B.example", "--http-listen", listen)
	b.must("ca", "certificate", "b.example", file("acme2.crt"), file("acme2.key"), "--provisioner", "acme",
		"--san", "b.example", "--san", "A.example", "--http-listen", listen)
	acme1, acme2 := certSerial(t, file("acme1.crt")), certSerial(t, file("acme2.crt"))
	if e1, e2 := api.endpointOf(acme1), api.endpointOf(acme2); e1 != e2 {
		t.Fatalf("ACME certificates for the same names in Endpoints %s and %s", e1, e2)
	}

	// The expiry alert fires once, on the Endpoint about to expire.
	a.must(append([]string{"ca", "certificate", "expiring.example", file("x.crt"), file("x.key"), "--not-after", "6m"}, jwk...)...)
	xs := certSerial(t, file("x.crt"))
	xep := api.endpointOf(xs)
	eventually(t, 30*time.Second, func() error {
		if n := len(hooks.received()); n == 0 {
			return fmt.Errorf("no alert yet")
		}
		return nil
	})
	time.Sleep(2 * time.Second) // a duplicate, from either replica, would arrive now
	got := hooks.received()
	if len(got) != 1 || hooks.badSignatures() != 0 {
		t.Fatalf("alerts = %+v, bad signatures %d; want exactly one", got, hooks.badSignatures())
	}
	if got[0].EndpointID != xep || got[0].Serial != xs || got[0].Type != "endpoint.expiring" {
		t.Fatalf("alert = %+v, want Endpoint %s serial %s", got[0], xep, xs)
	}

	// The gauge counts the one Endpoint expiring within the window.
	eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), "\nstepfort_billing_endpoints_expiring 1\n") {
			return fmt.Errorf("no stepfort_billing_endpoints_expiring 1 in /metrics")
		}
		return nil
	})

	// The report and the Endpoints agree, through the CLI.
	month := billing.MonthOf(time.Now()).String()
	var report billing.Report
	cliJSON(t, c, urls[0], &report, "billing", "report", "--month", month, "--format", "json")
	var list billing.EndpointList
	cliJSON(t, c, urls[0], &list, "endpoints", "list", "--all", "--limit", "2")
	byProv := map[string][2]int{} // endpoints, certificates
	for _, e := range list.Endpoints {
		var d billing.EndpointDetail
		cliJSON(t, c, urls[1], &d, "endpoints", "show", e.ID)
		if len(d.Lineage) != d.Certificates {
			t.Fatalf("Endpoint %s: %d lineage entries, %d certificates", e.ID, len(d.Lineage), d.Certificates)
		}
		v := byProv[d.Provisioner.Name]
		byProv[d.Provisioner.Name] = [2]int{v[0] + 1, v[1] + len(d.Lineage)}
	}
	if len(report.Provisioners) != len(byProv) {
		t.Fatalf("report has %d provisioners, Endpoints have %d", len(report.Provisioners), len(byProv))
	}
	for _, l := range report.Provisioners {
		if want := byProv[l.Provisioner]; l.Endpoints != want[0] || l.Certificates != want[1] || l.Billable != want[0] {
			t.Errorf("report line %+v, Endpoints say %d endpoints with %d certificates", l, want[0], want[1])
		}
	}
	if report.Total.Endpoints != 4 || report.Total.Billable != 4 || report.Total.Certificates != 7 {
		t.Errorf("report total = %+v, want 4 Endpoint-months over 7 certificates", report.Total)
	}
	detail := api.show(ep1)
	var lineage []string
	for _, l := range detail.Lineage {
		lineage = append(lineage, l.ObtainedBy+"<"+map[bool]string{true: "parent", false: "-"}[l.ParentSerial == s1])
	}
	sort.Strings(lineage)
	if want := []string{"renew<parent", "renew<parent", "sign<-"}; !reflect.DeepEqual(lineage, want) {
		t.Fatalf("lineage of %s = %v, want %v", ep1, lineage, want)
	}

	// Backend-independent summary: Endpoints by provisioner, grouping,
	// subject, state and lineage shape; the report's numbers.
	var rows []string
	for _, e := range list.Endpoints {
		d := api.show(e.ID)
		var shape []string
		for _, l := range d.Lineage {
			shape = append(shape, l.ObtainedBy+"/"+l.Status)
		}
		sort.Strings(shape)
		rows = append(rows, fmt.Sprintf("%s %s %s %s %s %v", d.Provisioner.Name, d.Grouping, d.SubjectKey, d.State, d.EndReason, shape))
	}
	sort.Strings(rows)
	for _, l := range append(report.Provisioners, &report.Total) {
		rows = append(rows, fmt.Sprintf("report %s %d %d %d %d", l.Provisioner, l.Endpoints, l.ExtraCertificates, l.Certificates, l.Billable))
	}
	return strings.Join(rows, "\n")
}

type billingAPI struct {
	t     *testing.T
	c     *ca
	url   string
	token string
	hc    *http.Client
}

func (a *billingAPI) get(path string, out any) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, a.url+"/api/v1"+path, nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return resp.StatusCode, json.Unmarshal(b, out)
}

// endpointOf waits until the certificate's event is recorded and returns
// its Endpoint ID (found through the list filter on the subject).
func (a *billingAPI) endpointOf(serial string) string {
	a.t.Helper()
	var id string
	eventually(a.t, 30*time.Second, func() error {
		var list billing.EndpointList
		if _, err := a.get("/endpoints?limit=1000", &list); err != nil {
			return err
		}
		for _, e := range list.Endpoints {
			d := a.show(e.ID)
			for _, l := range d.Lineage {
				if l.Serial == serial && l.Recorded {
					id = e.ID
					return nil
				}
			}
		}
		return fmt.Errorf("certificate %s not in any Endpoint yet", serial)
	})
	return id
}

func (a *billingAPI) show(id string) billing.EndpointDetail {
	a.t.Helper()
	var d billing.EndpointDetail
	if _, err := a.get("/endpoints/"+url.PathEscape(id), &d); err != nil {
		a.t.Fatal(err)
	}
	return d
}

// cliJSON runs a stepfort admin command with --json and decodes its output.
func cliJSON(t *testing.T, c *ca, caURL string, out any, args ...string) {
	t.Helper()
	args = append(args, "--json", "--ca-url", caURL, "--root", c.Root, "--token-file", c.AdminToken)
	cmd := exec.Command(stepfortBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("stepfort %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("stepfort %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// alertReceiver is a webhook endpoint that checks the HMAC signature.
type alertReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	secret []byte
	got    []billing.AlertPayload
	bad    int
}

func startAlertReceiver(t *testing.T, secret []byte) *alertReceiver {
	r := &alertReceiver{secret: secret}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if !hmac.Equal([]byte(req.Header.Get(billing.SignatureHeader)), []byte(billing.Sign(r.secret, body))) {
			r.bad++
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var p billing.AlertPayload
		if err := json.Unmarshal(body, &p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.got = append(r.got, p)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *alertReceiver) received() []billing.AlertPayload {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]billing.AlertPayload(nil), r.got...)
}

func (r *alertReceiver) badSignatures() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bad
}

// startLoopbackDNS serves DNS over UDP on loopback, answering every A query
// with 127.0.0.1 and every other query with no records. It returns its
// address for the daemon's --resolver flag.
func startLoopbackDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := dnsAnswer(buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, addr)
			}
		}
	}()
	return pc.LocalAddr().String()
}

func dnsAnswer(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil
	}
	i := 12
	for i < len(q) && q[i] != 0 {
		i += int(q[i]) + 1
	}
	if i+5 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i+1 : i+3])
	question := q[12 : i+5]
	resp := make([]byte, 12, 64)
	copy(resp, q[:2])
	binary.BigEndian.PutUint16(resp[2:], 0x8180) // response, recursion desired and available
	binary.BigEndian.PutUint16(resp[4:], 1)
	if qtype == 1 {
		binary.BigEndian.PutUint16(resp[6:], 1)
	}
	resp = append(resp, question...)
	if qtype == 1 {
		resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1)
	}
	return resp
}

// TestBillingRebuild moves a CA that ran without billing (as a step-ca
// database would) to billing: `stepfort billing rebuild` records its
// certificates, infers the renewal and applies the revocation.
func TestBillingRebuild(t *testing.T) {
	c := initCA(t)
	setBilling := func(enabled bool) {
		editConfig(t, c.Config, func(m map[string]any) {
			m["stepfort"].(map[string]any)["plugins"].(map[string]any)["billing"] = map[string]any{"enabled": enabled}
		})
	}
	setBilling(false)
	daemon := serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "m.crt"), filepath.Join(dir, "m.key")
	step.must("ca", "certificate", "moved.example", crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	first := certSerial(t, crt)
	// Rebuild orders certificates by notBefore (second precision): let the
	// renewal start in a later second, as every real renewal does.
	time.Sleep(1100 * time.Millisecond)
	step.must("ca", "renew", "--force", crt, key)
	renewed := certSerial(t, crt)
	other := filepath.Join(dir, "o.crt")
	step.must("ca", "certificate", "other.example", other, filepath.Join(dir, "o.key"), "--provisioner", "admin", "--provisioner-password-file", c.Password)
	step.must("ca", "revoke", "--cert", other, "--key", filepath.Join(dir, "o.key"))
	if err := daemon.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := daemon.Wait(30 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}

	setBilling(true)
	serve(t, c.Config, c.Password, c.Port)
	var before billing.EndpointList
	cliJSON(t, c, c.URL, &before, "endpoints", "list")
	if len(before.Endpoints) != 0 {
		t.Fatalf("Endpoints before the rebuild: %+v", before.Endpoints)
	}
	var res billing.RebuildResult
	cliJSON(t, c, c.URL, &res, "billing", "rebuild")
	if res.Recorded != 3 || res.InferredLinks != 1 || res.Revoked != 1 || len(res.Errors) != 0 {
		t.Fatalf("rebuild = %+v", res)
	}
	var list billing.EndpointList
	cliJSON(t, c, c.URL, &list, "endpoints", "list", "--q", "moved.example")
	if len(list.Endpoints) != 1 {
		t.Fatalf("Endpoints for moved.example: %+v", list.Endpoints)
	}
	var d billing.EndpointDetail
	cliJSON(t, c, c.URL, &d, "endpoints", "show", list.Endpoints[0].ID)
	if len(d.Lineage) != 2 || d.Lineage[0].Serial != first || d.Lineage[1].Serial != renewed ||
		d.Lineage[1].ParentSerial != first || !d.Lineage[1].Inferred || d.Lineage[1].ObtainedBy != billing.ObtainedRenew {
		t.Fatalf("rebuilt lineage = %+v", d.Lineage)
	}
	// An Endpoint counts as active through the second its certificate was
	// revoked in (docs/billing.md), so it reads as ended from the next one.
	eventually(t, 5*time.Second, func() error {
		var ended billing.EndpointList
		cliJSON(t, c, c.URL, &ended, "endpoints", "list", "--state", "ended")
		if len(ended.Endpoints) != 1 || ended.Endpoints[0].SubjectKey != "other.example" || ended.Endpoints[0].EndReason != billing.EndRevoked {
			return fmt.Errorf("ended Endpoints = %+v", ended.Endpoints)
		}
		return nil
	})
	var again billing.RebuildResult
	cliJSON(t, c, c.URL, &again, "billing", "rebuild")
	if again.Recorded != 0 || again.AlreadyKnown != 3 {
		t.Fatalf("second rebuild = %+v", again)
	}
}
