package e2e

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	oidDeltaIndicator = asn1.ObjectIdentifier{2, 5, 29, 27}
	oidFreshest       = asn1.ObjectIdentifier{2, 5, 29, 46}
)

// deltaCRLConfig is the revocation plugin's crl block with deltas on and
// periods short enough for a test.
func deltaCRLConfig(base, delta string) map[string]any {
	return map[string]any{"publishDelay": "1s", "leaseTTL": "4s",
		"delta": map[string]any{"enabled": true, "basePeriod": base, "deltaPeriod": delta}}
}

// fetchDER GETs path on the HTTP listener and parses the CRL.
func fetchDER(httpPort int, path string) (*x509.RevocationList, []byte, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: %s %s", path, resp.Status, der)
	}
	crl, err := x509.ParseRevocationList(der)
	return crl, der, err
}

// deltaBase is the BaseCRLNumber of a delta CRL, -1 for a base, after
// checking the indicator is critical.
func deltaBase(t *testing.T, crl *x509.RevocationList) int64 {
	t.Helper()
	for _, e := range crl.Extensions {
		if e.Id.Equal(oidDeltaIndicator) {
			var n *big.Int
			if _, err := asn1.Unmarshal(e.Value, &n); err != nil || !e.Critical {
				t.Fatalf("delta CRL indicator critical=%v: %v", e.Critical, err)
			}
			return n.Int64()
		}
	}
	return -1
}

// crlPair is a base and a delta fetched from one replica.
type crlPair struct {
	base, delta       *x509.RevocationList
	baseDER, deltaDER []byte
}

// fetchPair fetches the base and the delta and checks the RFC 5280 rules
// between them when the delta is built on this base.
func fetchPair(t *testing.T, httpPort int) (crlPair, error) {
	t.Helper()
	var p crlPair
	var err error
	if p.base, p.baseDER, err = fetchDER(httpPort, "/1.0/crl"); err != nil {
		return p, err
	}
	if p.delta, p.deltaDER, err = fetchDER(httpPort, "/1.0/crl/delta"); err != nil {
		return p, err
	}
	if deltaBase(t, p.base) != -1 || !hasExtension(p.base, oidFreshest) {
		t.Fatal("the base has a delta indicator or no Freshest CRL")
	}
	if hasExtension(p.delta, oidFreshest) || hasExtension(p.delta, oidIDP) || hasExtension(p.base, oidIDP) {
		t.Fatal("a Freshest CRL on the delta, or an IDP")
	}
	if string(p.base.AuthorityKeyId) != string(p.delta.AuthorityKeyId) || string(p.base.RawIssuer) != string(p.delta.RawIssuer) {
		t.Fatal("base and delta differ in issuer or AKI")
	}
	return p, nil
}

// publishedNumbers are the CRL numbers a daemon logged publishing, base
// and delta, in order.
func publishedNumbers(t *testing.T, log string) []int64 {
	t.Helper()
	return publishedSince(t, log, time.Time{})
}

// publishedSince is publishedNumbers of what was logged after since.
func publishedSince(t *testing.T, log string, since time.Time) []int64 {
	t.Helper()
	var out []int64
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `"msg":"CRL published"`) && !strings.Contains(line, `"msg":"delta CRL published"`) {
			continue
		}
		var rec struct {
			Time   time.Time
			Series string
			Number int64
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %s: %v", line, err)
		}
		if rec.Series == "own" && rec.Time.After(since) {
			out = append(out, rec.Number)
		}
	}
	return out
}

func strictlyIncreasing(t *testing.T, what string, ns []int64) {
	t.Helper()
	for i := 1; i < len(ns); i++ {
		if ns[i] <= ns[i-1] {
			t.Fatalf("%s: CRL numbers do not strictly increase: %v", what, ns)
		}
	}
}

// TestDeltaCRLWithOpenSSL: stepfort's own issuer with delta CRLs. A leaf
// revoked after the base is revoked for `openssl verify -crl_check
// -use_deltas` through the delta (the base alone still says OK); a new
// base absorbs it and the next delta no longer lists it; base and delta
// numbers come from one strictly increasing sequence.
func TestDeltaCRLWithOpenSSL(t *testing.T) {
	c := initCA(t)
	editConfig(t, c.Config, func(m map[string]any) {
		rev := m["stepfort"].(map[string]any)["plugins"].(map[string]any)["revocation"].(map[string]any)
		rev["crl"] = deltaCRLConfig("20s", "10s")
	})
	proc := serve(t, c.Config, c.Password, c.Port)
	step := newStepCLI(t)
	step.bootstrap(c, c.URL)
	dir := t.TempDir()
	good, bad, badKey := filepath.Join(dir, "good.crt"), filepath.Join(dir, "bad.crt"), filepath.Join(dir, "bad.key")
	step.must("ca", "certificate", "good.example", good, filepath.Join(dir, "good.key"), "--provisioner", "admin", "--provisioner-password-file", c.Password)
	step.must("ca", "certificate", "bad.example", bad, badKey, "--provisioner", "admin", "--provisioner-password-file", c.Password)
	cert := readCert(t, bad)
	var freshest bool
	for _, e := range cert.Extensions {
		freshest = freshest || (e.Id.Equal(oidFreshest) && strings.Contains(string(e.Value), "/1.0/crl/delta"))
	}
	if !freshest {
		t.Fatal("the certificate carries no Freshest CRL naming the delta URL")
	}

	// A base that does not list the leaf yet, then the revocation.
	eventually(t, 15*time.Second, func() error { _, err := fetchPair(t, c.HTTPPort); return err })
	step.must("ca", "revoke", "--cert", bad, "--key", badKey, "--reasonCode", "1")
	serial := cert.SerialNumber
	var viaDelta crlPair
	eventually(t, 10*time.Second, func() error {
		p, err := fetchPair(t, c.HTTPPort)
		if err != nil {
			return err
		}
		if !crlLists(p.delta, serial) {
			return fmt.Errorf("delta %d does not list the revoked serial", p.delta.Number)
		}
		if crlLists(p.base, serial) {
			// A base came first (its period ended): this run cannot show
			// the delta's effect.
			t.Fatalf("base %d lists the leaf before any delta did", p.base.Number)
		}
		if b := deltaBase(t, p.delta); b > p.base.Number.Int64() {
			return fmt.Errorf("delta on base %d, served base %d", b, p.base.Number)
		}
		viaDelta = p
		return nil
	})
	if deltaBase(t, viaDelta.delta) > viaDelta.base.Number.Int64() || viaDelta.delta.Number.Cmp(viaDelta.base.Number) <= 0 {
		t.Fatalf("delta %v on base %d with base %v", viaDelta.delta.Number, deltaBase(t, viaDelta.delta), viaDelta.base.Number)
	}
	baseFile, deltaFile, chain := filepath.Join(dir, "base.crl"), filepath.Join(dir, "delta.crl"), filepath.Join(dir, "chain.pem")
	_ = os.WriteFile(baseFile, viaDelta.baseDER, 0o644)
	_ = os.WriteFile(deltaFile, viaDelta.deltaDER, 0o644)
	rootPEM, _ := os.ReadFile(c.Root)
	interPEM, _ := os.ReadFile(filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	_ = os.WriteFile(chain, append(rootPEM, interPEM...), 0o644)
	verify := func(leaf string, deltas bool) (string, error) {
		args := []string{"verify", "-crl_check", "-CAfile", chain, "-CRLfile", baseFile}
		if deltas {
			args = append(args, "-CRLfile", deltaFile, "-use_deltas")
		}
		return openssl(t, append(args, leaf)...)
	}
	if out, err := verify(bad, true); err == nil || !strings.Contains(out, "error 23") {
		t.Fatalf("openssl -use_deltas on the leaf revoked after the base: %v\n%s", err, out)
	}
	if out, err := verify(bad, false); err != nil {
		t.Fatalf("openssl without -use_deltas (base alone): %v\n%s", err, out)
	}
	if out, err := verify(good, true); err != nil {
		t.Fatalf("openssl -use_deltas on the good leaf: %v\n%s", err, out)
	}

	// The next base (basePeriod 20s) absorbs it; the delta on it does not
	// list it any more.
	eventually(t, 30*time.Second, func() error {
		p, err := fetchPair(t, c.HTTPPort)
		if err != nil {
			return err
		}
		if !crlLists(p.base, serial) {
			return fmt.Errorf("base %d does not list it yet", p.base.Number)
		}
		if deltaBase(t, p.delta) != p.base.Number.Int64() {
			return fmt.Errorf("delta %d is on base %d, not on %d yet", p.delta.Number, deltaBase(t, p.delta), p.base.Number)
		}
		if crlLists(p.delta, serial) {
			t.Fatalf("delta %d on base %d still lists what the base includes", p.delta.Number, p.base.Number)
		}
		return nil
	})
	ns := publishedNumbers(t, proc.Log())
	strictlyIncreasing(t, "base and delta", ns)
	if len(ns) < 4 {
		t.Fatalf("published %v: expected bases and deltas", ns)
	}
	t.Logf("published CRL numbers (base and delta): %v", ns)
}
