package e2e

import (
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/testenv"
)

// fetchCRL downloads and parses the CRL served over HTTP on httpPort.
// crlNoticeBound is how long after a new CRL another replica may still
// serve the previous one: docs/ha.md's second, plus the time to fetch.
const crlNoticeBound = 1500 * time.Millisecond

func fetchCRL(httpPort int) (*x509.RevocationList, []byte, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/1.0/crl", httpPort))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET CRL: %s %s", resp.Status, der)
	}
	crl, err := x509.ParseRevocationList(der)
	return crl, der, err
}

func crlLists(crl *x509.RevocationList, serial *big.Int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

type replica struct {
	name     string
	proc     *testenv.Process
	httpPort int
	url      string
}

// TestCRLCoordinatedAcrossReplicas runs three replicas on one PostgreSQL:
// exactly one publishes; a revocation through any replica is in the CRL
// every replica serves within the publish delay; CRL numbers only go up;
// after kill -9 of the lease holder another replica publishes the next CRL
// within the lease TTL; OpenSSL verifies against the CRL of any replica.
func TestCRLCoordinatedAcrossReplicas(t *testing.T) {
	c, replicas := startCRLReplicas(t, map[string]any{"publishDelay": "2s", "leaseTTL": "4s"})

	// Numbers only increase: on each replica, and across replicas once a
	// replica has had the second docs/ha.md allows it to notice a new CRL
	// (it compares the stored CRL's fingerprint at most once a second).
	var numbers []int64 // every CRL number fetched, in order
	lastOn := map[string]int64{}
	firstSeen := map[int64]time.Time{}
	fetch := func(r *replica) *x509.RevocationList {
		t.Helper()
		crl, _, err := fetchCRL(r.httpPort)
		if err != nil {
			t.Fatalf("replica %s: %v", r.name, err)
		}
		n := crl.Number.Int64()
		if n < lastOn[r.name] {
			t.Fatalf("replica %s: CRL number went down: %d after %d (all: %v)", r.name, n, lastOn[r.name], numbers)
		}
		for seen, at := range firstSeen {
			if n < seen && time.Since(at) > crlNoticeBound {
				t.Fatalf("replica %s serves CRL %d %v after CRL %d was served (all: %v)", r.name, n, time.Since(at), seen, numbers)
			}
		}
		if _, ok := firstSeen[n]; !ok {
			firstSeen[n] = time.Now()
		}
		lastOn[r.name] = n
		numbers = append(numbers, n)
		return crl
	}
	holder := func() *replica { return crlHolder(t, replicas) }
	eventually(t, 10*time.Second, func() error { _, _, err := fetchCRL(c.HTTPPort); return err })
	first := holder()
	start := fetch(replicas[0]).Number.Int64()

	step := newStepCLI(t)
	dir := t.TempDir()
	issue := func(via *replica, name string) (string, string) {
		step.bootstrap(c, via.url)
		crt, key := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		step.must("ca", "certificate", name, crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
		return crt, key
	}
	// Revoke through a replica that does not hold the lease.
	var other *replica
	for _, r := range replicas {
		if r != first {
			other = r
			break
		}
	}
	goodCrt, _ := issue(replicas[0], "good.example")
	badCrt, badKey := issue(other, "bad.example")
	step.bootstrap(c, other.url)
	step.must("ca", "revoke", "--cert", badCrt, "--key", badKey)
	revokedAt := time.Now()
	bad := readCert(t, badCrt).SerialNumber
	for _, r := range replicas {
		eventually(t, 5*time.Second, func() error {
			if crl := fetch(r); !crlLists(crl, bad) {
				return fmt.Errorf("replica %s CRL %d lacks the revoked serial", r.name, crl.Number)
			}
			return nil
		})
	}
	t.Logf("revocation in every replica's CRL after %v", time.Since(revokedAt))
	afterRevoke := numbers[len(numbers)-1]
	if afterRevoke <= start {
		t.Fatalf("CRL number did not increase: %d then %d", start, afterRevoke)
	}

	// OpenSSL against the CRL of the last replica.
	_, der, err := fetchCRL(replicas[2].httpPort)
	if err != nil {
		t.Fatal(err)
	}
	crlFile, chain := filepath.Join(dir, "ha.crl"), filepath.Join(dir, "chain.pem")
	_ = os.WriteFile(crlFile, der, 0o644)
	rootPEM, _ := os.ReadFile(c.Root)
	interPEM, _ := os.ReadFile(filepath.Join(c.Dir, "certs", "intermediate_ca.crt"))
	_ = os.WriteFile(chain, append(rootPEM, interPEM...), 0o644)
	if out, err := openssl(t, "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crlFile, goodCrt); err != nil {
		t.Fatalf("verify good: %v\n%s", err, out)
	}
	if out, err := openssl(t, "verify", "-crl_check", "-CAfile", chain, "-CRLfile", crlFile, badCrt); err == nil || !strings.Contains(out, "error 23") {
		t.Fatalf("verify revoked: %v\n%s", err, out)
	}

	// Kill the lease holder; another replica takes over and publishes the
	// next revocation.
	if err := first.proc.Kill9(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	var survivor *replica
	for _, r := range replicas {
		if r != first {
			survivor = r
			break
		}
	}
	crt2, key2 := issue(survivor, "bad2.example")
	step.bootstrap(c, survivor.url)
	step.must("ca", "revoke", "--cert", crt2, "--key", key2)
	bad2 := readCert(t, crt2).SerialNumber
	eventually(t, 4*time.Second+2*time.Second+3*time.Second, func() error { // lease TTL + publish delay + slack
		if crl := fetch(survivor); !crlLists(crl, bad2) {
			return fmt.Errorf("survivor CRL %d lacks the second revocation", crl.Number)
		}
		return nil
	})
	t.Logf("new holder published %v after kill -9 of %s", time.Since(killedAt), first.name)
	if next := holder(); next == first {
		t.Fatal("the killed replica still holds the lease")
	}
	if numbers[len(numbers)-1] <= afterRevoke {
		t.Fatalf("CRL number did not increase after failover: %v", numbers)
	}
}

// startCRLReplicas runs three replicas (a, b, c) of one installation on a
// fresh PostgreSQL database with crl as the revocation plugin's crl block.
func startCRLReplicas(t *testing.T, crl map[string]any) (*ca, []*replica) {
	t.Helper()
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "crlha")
	editConfig(t, c.Config, func(m map[string]any) {
		pl := m["stepfort"].(map[string]any)["plugins"].(map[string]any)
		rev := pl["revocation"].(map[string]any)
		rev["crl"] = crl
	})
	replicas := []*replica{{name: "a", httpPort: c.HTTPPort, url: c.URL}}
	replicas[0].proc = serve(t, c.Config, c.Password, c.Port)
	for _, name := range []string{"b", "c"} {
		cfg, port, httpPort := replicaConfigPorts(t, c, "replica-"+name)
		r := &replica{name: name, httpPort: httpPort, url: fmt.Sprintf("https://localhost:%d", port)}
		r.proc = serve(t, cfg, c.Password, port)
		replicas = append(replicas, r)
	}
	return c, replicas
}

// crlHolder is the replica whose log last says it holds the CRL lease
// (exactly one of the live ones).
func crlHolder(t *testing.T, replicas []*replica) *replica {
	t.Helper()
	var found *replica
	eventually(t, 10*time.Second, func() error {
		found = nil
		for _, r := range replicas {
			if r.proc.Exited() {
				continue
			}
			logs := r.proc.Log()
			i := strings.LastIndex(logs, `"msg":"CRL publisher lease"`)
			if i >= 0 && strings.Contains(logs[i:], `"self":true`) {
				if found != nil {
					return fmt.Errorf("replicas %s and %s both claim the lease", found.name, r.name)
				}
				found = r
			}
		}
		if found == nil {
			return fmt.Errorf("no replica holds the CRL lease")
		}
		return nil
	})
	return found
}

// TestCRLDeltaCoordinatedAcrossReplicas: the same with delta CRLs on.
// A revocation through a replica that does not hold the lease reaches
// every replica's delta; after kill -9 of the holder another replica
// publishes the next delta; base and delta numbers form one strictly
// increasing sequence across the three replicas: each replica serves
// increasing numbers of each kind, every published number is unique, and
// the new holder's numbers are above every number the killed one used.
func TestCRLDeltaCoordinatedAcrossReplicas(t *testing.T) {
	c, replicas := startCRLReplicas(t, deltaCRLConfig("30s", "10s"))
	lastBase, lastDelta := map[string]int64{}, map[string]int64{}
	fetch := func(r *replica) crlPair {
		t.Helper()
		p, err := fetchPair(t, r.httpPort)
		if err != nil {
			t.Fatalf("replica %s: %v", r.name, err)
		}
		b, d := p.base.Number.Int64(), p.delta.Number.Int64()
		if b < lastBase[r.name] || d < lastDelta[r.name] {
			t.Fatalf("replica %s: numbers went down: base %d after %d, delta %d after %d", r.name, b, lastBase[r.name], d, lastDelta[r.name])
		}
		if bn := deltaBase(t, p.delta); bn >= d || b == d {
			t.Fatalf("replica %s: delta %d on base %d, base %d", r.name, d, bn, b)
		}
		lastBase[r.name], lastDelta[r.name] = b, d
		return p
	}
	eventually(t, 15*time.Second, func() error { _, err := fetchPair(t, c.HTTPPort); return err })
	first := crlHolder(t, replicas)
	var other, survivor *replica
	for _, r := range replicas {
		if r != first {
			other = r
			break
		}
	}
	survivor = other

	step := newStepCLI(t)
	dir := t.TempDir()
	revokeVia := func(via *replica, name string) *big.Int {
		step.bootstrap(c, via.url)
		crt, key := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		step.must("ca", "certificate", name, crt, key, "--provisioner", "admin", "--provisioner-password-file", c.Password)
		step.must("ca", "revoke", "--cert", crt, "--key", key)
		return readCert(t, crt).SerialNumber
	}
	listed := func(p crlPair, serial *big.Int) bool { return crlLists(p.delta, serial) || crlLists(p.base, serial) }
	bad := revokeVia(other, "bad.example")
	for _, r := range replicas {
		eventually(t, 6*time.Second, func() error {
			if p := fetch(r); !listed(p, bad) {
				return fmt.Errorf("replica %s: neither base %d nor delta %d lists the revocation", r.name, p.base.Number, p.delta.Number)
			}
			return nil
		})
	}

	if err := first.proc.Kill9(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	bad2 := revokeVia(survivor, "bad2.example")
	eventually(t, 4*time.Second+2*time.Second+4*time.Second, func() error { // lease TTL + publish delay + slack
		if p := fetch(survivor); !listed(p, bad2) {
			return fmt.Errorf("survivor: delta %d lacks the second revocation", p.delta.Number)
		}
		return nil
	})
	t.Logf("new holder published %v after kill -9 of %s", time.Since(killedAt), first.name)
	if next := crlHolder(t, replicas); next == first {
		t.Fatal("the killed replica still holds the lease")
	}

	// The logs: every replica's publications strictly increase, no number
	// is used twice, and the killed holder's are below everyone's later.
	seen := map[int64]string{}
	var killedMax int64
	for _, r := range replicas {
		ns := publishedNumbers(t, r.proc.Log())
		strictlyIncreasing(t, "replica "+r.name, ns)
		for _, n := range ns {
			if by, dup := seen[n]; dup {
				t.Fatalf("CRL number %d published by %s and %s", n, by, r.name)
			}
			seen[n] = r.name
			if r == first {
				killedMax = max(killedMax, n)
			}
		}
		t.Logf("replica %s published %v", r.name, ns)
	}
	for _, r := range replicas {
		if r == first {
			continue
		}
		for _, n := range publishedSince(t, r.proc.Log(), killedAt) {
			if n <= killedMax {
				t.Fatalf("replica %s published %d, not above %d of the killed holder", r.name, n, killedMax)
			}
		}
	}
	if killedMax == 0 {
		t.Fatal("the first holder published nothing")
	}
}
