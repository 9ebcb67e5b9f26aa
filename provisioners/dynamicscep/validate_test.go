package dynamicscep

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stepfort/stepfort/internal/testenv"
)

// TestConsumeOnce: a challenge is accepted once, with its ID in the
// template data, then refused as consumed; unknown and empty challenges
// and another provisioner's enrollment are refused.
func TestConsumeOnce(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			p, _ := newPlugin(t, backend)
			secret, c := create(t, p, Bindings{}, "")
			if len(secret) != 32 || strings.ToUpper(secret) != secret {
				t.Fatalf("challenge %q: want 32 upper-case hex digits", secret)
			}
			csr, _ := newCSR(t, csrSpec{cn: "device-001"})
			ctx := context.Background()
			data, err := p.ValidateSCEPChallenge(ctx, enroll(secret, csr))
			if err != nil {
				t.Fatal(err)
			}
			if data["challengeID"] != c.ID {
				t.Fatalf("data %v, want challengeID %s", data, c.ID)
			}
			_, err = p.ValidateSCEPChallenge(ctx, enroll(secret, csr))
			if got := result(t, err); got != ResultRefusedConsumed {
				t.Fatalf("second use: %s (%v)", got, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("refusal %q contains the challenge", err)
			}
			for _, s := range []string{"", "0123456789ABCDEF0123456789ABCDEF", strings.ToLower(secret), strings.Repeat("A", 10000)} {
				_, err = p.ValidateSCEPChallenge(ctx, enroll(s, csr))
				if got := result(t, err); got != ResultRefusedUnknown {
					t.Fatalf("challenge %.20q: %s", s, got)
				}
			}
			other, _ := create(t, p, Bindings{}, "")
			req := enroll(other, csr)
			req.Provisioner = "other"
			_, err = p.ValidateSCEPChallenge(ctx, req)
			if got := result(t, err); got != ResultRefusedProvisioner {
				t.Fatalf("other provisioner: %s", got)
			}
			// The stored record holds no trace of the challenge.
			raw, err := p.host.DB().Get(ChallengesTable, []byte(hashChallenge(secret)))
			if err != nil || strings.Contains(string(raw), secret) {
				t.Fatalf("stored record %s (%v)", raw, err)
			}
			if n := testutil.ToFloat64(p.metrics.challenges.WithLabelValues("api", ResultAccepted)); n != 1 {
				t.Fatalf("accepted counter %v", n)
			}
			if n := testutil.ToFloat64(p.metrics.challenges.WithLabelValues("api", ResultRefusedConsumed)); n != 1 {
				t.Fatalf("refused_consumed counter %v", n)
			}
		})
	}
}

// TestConcurrentConsume: the same challenge sent at once to two replicas
// (two plugin instances on one database), by several goroutines each, is
// accepted exactly once.
func TestConcurrentConsume(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			db := testenv.OpenStore(t, backend)
			a, _ := newPluginOn(t, db, backend, defaultConfig())
			b, _ := newPluginOn(t, db, backend, defaultConfig())
			csr, _ := newCSR(t, csrSpec{cn: "device-001"})
			for round := range 5 {
				secret, _ := create(t, a, Bindings{}, "")
				var wg sync.WaitGroup
				var mu sync.Mutex
				results := map[string]int{}
				start := make(chan struct{})
				for i := range 8 {
					p := a
					if i%2 == 1 {
						p = b
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						_, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr))
						r := ResultAccepted
						if err != nil {
							r = err.Error()
							if rf, ok := err.(*Refusal); ok {
								r = rf.Result
							}
						}
						mu.Lock()
						results[r]++
						mu.Unlock()
					}()
				}
				close(start)
				wg.Wait()
				if results[ResultAccepted] != 1 || results[ResultRefusedConsumed] != 7 {
					t.Fatalf("round %d: %v, want 1 accepted and 7 refused_consumed", round, results)
				}
			}
		})
	}
}

// TestExpiry: a challenge is refused once the host clock passes its
// expiry, and a ttl outside 1s..maxChallengeTTL is refused at creation.
func TestExpiry(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			p, h := newPlugin(t, backend)
			secret, _ := create(t, p, Bindings{}, "30m")
			csr, _ := newCSR(t, csrSpec{cn: "d"})
			h.Advance(30 * time.Minute)
			_, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr))
			if got := result(t, err); got != ResultRefusedExpired {
				t.Fatalf("expired: %s (%v)", got, err)
			}
			// Default TTL 60m: valid one second before.
			secret, _ = create(t, p, Bindings{}, "")
			h.Advance(time.Hour - time.Second)
			if _, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr)); err != nil {
				t.Fatalf("before expiry: %v", err)
			}
		})
	}
}

// TestBindings: each binding a CSR does not match is refused, and the
// challenge stays usable for a matching CSR.
func TestBindings(t *testing.T) {
	p, _ := newPlugin(t, "bbolt")
	bound := Bindings{CommonName: "device-001", DNSNames: []string{"device-001.example.test"}, IPAddresses: []string{"192.0.2.7"},
		EmailAddresses: []string{"dev@example.test"}, URIs: []string{"urn:device:001"}}
	tests := []struct {
		name string
		csr  csrSpec
		want string
	}{
		{"other CN", csrSpec{cn: "device-002"}, ResultRefusedMismatch},
		{"empty CN", csrSpec{dns: []string{"device-001.example.test"}}, ResultRefusedMismatch},
		{"unbound DNS", csrSpec{cn: "device-001", dns: []string{"evil.example.test"}}, ResultRefusedMismatch},
		{"unbound IP", csrSpec{cn: "device-001", ips: []string{"192.0.2.8"}}, ResultRefusedMismatch},
		{"unbound email", csrSpec{cn: "device-001", emails: []string{"boss@example.test"}}, ResultRefusedMismatch},
		{"unbound URI", csrSpec{cn: "device-001", uris: []string{"urn:device:002"}}, ResultRefusedMismatch},
		{"one bad among good", csrSpec{cn: "device-001", dns: []string{"device-001.example.test", "x.example.test"}}, ResultRefusedMismatch},
		{"all bound", csrSpec{cn: "device-001", dns: []string{"DEVICE-001.example.test", "device-001"}, ips: []string{"192.0.2.7"},
			emails: []string{"dev@example.test"}, uris: []string{"urn:device:001"}}, ResultAccepted},
	}
	secret, _ := create(t, p, bound, "")
	for _, tt := range tests {
		csr, _ := newCSR(t, tt.csr)
		_, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr))
		if got := result(t, err); got != tt.want {
			t.Fatalf("%s: %s (%v), want %s", tt.name, got, err, tt.want)
		}
	}
	// A CN binding alone allows no other SAN.
	secret, _ = create(t, p, Bindings{CommonName: "host"}, "")
	csr, _ := newCSR(t, csrSpec{cn: "host", dns: []string{"other.example.test"}})
	if _, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr)); result(t, err) != ResultRefusedMismatch {
		t.Fatalf("CN-only binding with an extra SAN: %v", err)
	}
}

// TestDeviceBinding: a challenge bound to a device is refused while the
// device is disabled or gone and accepted when it is active.
func TestDeviceBinding(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			p, _ := newPlugin(t, backend)
			id := addDevice(t, p, "SERIAL-1")
			secret, _ := create(t, p, Bindings{Device: id}, "")
			csr, _ := newCSR(t, csrSpec{cn: "d"})
			setStatus(t, p, id, "disabled")
			_, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr))
			if got := result(t, err); got != ResultRefusedDevice {
				t.Fatalf("disabled device: %s (%v)", got, err)
			}
			setStatus(t, p, id, "active")
			data, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr))
			if err != nil || data["device"] != id {
				t.Fatalf("active device: %v %v", data, err)
			}
		})
	}
}

// TestCancelledDoesNotConsume: an enrollment the daemon has given up on
// leaves the challenge usable.
func TestCancelledDoesNotConsume(t *testing.T) {
	p, _ := newPlugin(t, "bbolt")
	secret, _ := create(t, p, Bindings{}, "")
	csr, _ := newCSR(t, csrSpec{cn: "d"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.ValidateSCEPChallenge(ctx, enroll(secret, csr)); err == nil {
		t.Fatal("accepted with a cancelled context")
	}
	if _, err := p.ValidateSCEPChallenge(context.Background(), enroll(secret, csr)); err != nil {
		t.Fatal(err)
	}
}
