package ha

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/plugins"
)

// TestHealthHidesReplicaIdentity: /health is unauthenticated, so the
// revocation plugin's part of it names the CRL publisher by an opaque id
// (the same on every replica), never by its host name, address or PID.
func TestHealthHidesReplicaIdentity(t *testing.T) {
	h := newTestHost(t)
	h.ReplicaID = plugins.ReplicaID("db-host-secret", "10.9.8.7:9443", 48213, "f00d")
	p := newTestPlugin(t, h)
	generationFor(t, p, urlA).Activate()
	waitForIDP(t, h, p, urlA)
	health, err := p.Health(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(health)
	for _, secret := range []string{"db-host-secret", "10.9.8.7", "9443", "48213", "f00d", "|"} {
		if strings.Contains(string(out), secret) {
			t.Fatalf("health %s exposes %q", out, secret)
		}
	}
	if health["crlPublisherIsSelf"] != true {
		t.Fatalf("health %s: this replica holds the lease", out)
	}
	id, _ := health["crlPublisher"].(string)
	if !regexp.MustCompile(`^[0-9a-f]{12}$`).MatchString(id) {
		t.Fatalf("crlPublisher %q is not an opaque 12-hex-digit id", id)
	}
	// Every replica reports the same id for one holder: a hash of its
	// replica id.
	sum := sha256.Sum256([]byte(h.ReplicaID))
	if want := hex.EncodeToString(sum[:])[:12]; id != want {
		t.Fatalf("crlPublisher %q, want %q", id, want)
	}
}
