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
	pg := testenv.StartPostgres(t)
	c := initCA(t, "--db", "postgresql", "--db-dsn", pg.DSN(), "--db-name", "crlha")
	editConfig(t, c.Config, func(m map[string]any) {
		pl := m["stepfort"].(map[string]any)["plugins"].(map[string]any)
		rev := pl["revocation"].(map[string]any)
		rev["crl"] = map[string]any{"publishDelay": "2s", "leaseTTL": "4s"}
	})
	replicas := []*replica{{name: "a", httpPort: c.HTTPPort, url: c.URL}}
	replicas[0].proc = serve(t, c.Config, c.Password, c.Port)
	for _, name := range []string{"b", "c"} {
		cfg, port, httpPort := replicaConfigPorts(t, c, "replica-"+name)
		r := &replica{name: name, httpPort: httpPort, url: fmt.Sprintf("https://localhost:%d", port)}
		r.proc = serve(t, cfg, c.Password, port)
		replicas = append(replicas, r)
	}

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
	holder := func() *replica {
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
