package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/provisioners/dynamicscep"
	"github.com/stepfort/stepfort/provisioners/dynamicscep/intunemock"
)

// TestSCEPIntune: the "scep" provisioner in Intune mode against the mock
// (Entra ID token endpoint, Graph discovery and Intune's ScepActions on
// loopback TLS, trusted through intune.rootsFile). scepclient enrolls
// with a challenge Intune answers Success for, and the mock hears the
// successNotification of the certificate issued; a ChallengeExpired
// challenge gets failInfo badRequest. See docs/scep.md, "Intune".
func TestSCEPIntune(t *testing.T) {
	const tenant, clientID = "contoso.onmicrosoft.com", "11111111-2222-3333-4444-555555555555"
	m := intunemock.New(tenant, clientID)
	t.Cleanup(m.Server.Close)
	m.Secret = "e2e-secret"
	okChallenge := "intune-" + strings.Repeat("A1b2", 100) // Intune blobs are long
	expired := "intune-expired-" + strings.Repeat("Z9", 100)
	m.Answers[okChallenge] = "Success"
	m.Answers[expired] = "ChallengeExpired"

	c := initCA(t)
	dir := t.TempDir()
	secretFile, rootsFile := filepath.Join(dir, "secret"), filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(secretFile, []byte(m.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootsFile, m.RootsPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	editConfig(t, c.Config, func(cfg map[string]any) {
		ds := cfg["stepfort"].(map[string]any)["plugins"].(map[string]any)["dynamicScep"].(map[string]any)
		ds["intune"] = map[string]any{
			"provisioners": []string{"scep"}, "tenant": tenant, "clientID": clientID,
			"clientSecretFile": secretFile, "rootsFile": rootsFile,
			"loginHost": m.Host(), "graphHost": m.Host(), "timeout": "5s",
		}
	})
	serve(t, c.Config, c.Password, c.Port)

	certFile := mustEnroll(t, c, c.HTTPPort, filepath.Join(dir, "ok"), okChallenge, "intune-dev-1")
	cert := readCert(t, certFile)
	v := m.Calls("/validateRequest")
	if len(v) != 1 || v[0].Header.Get("api-version") != "2018-02-20" {
		t.Fatalf("validateRequest calls: %+v", v)
	}
	s := m.Calls("/successNotification")
	if len(s) != 1 {
		t.Fatalf("%d successNotification calls, want 1", len(s))
	}
	if got, want := s[0].Body["certificateThumbprint"], dynamicscep.Thumbprint(cert.Raw); got != want {
		t.Fatalf("thumbprint %v, want %v", got, want)
	}
	if got, want := s[0].Body["certificateSerialNumber"], strings.ToUpper(cert.SerialNumber.Text(16)); got != want {
		t.Fatalf("serial %v, want %v", got, want)
	}
	if got, want := s[0].Body["certificateExpirationDateUtc"], cert.NotAfter.UTC().Format("2006-01-02T15:04:05.000Z"); got != want {
		t.Fatalf("expiry %v, want %v", got, want)
	}
	if s[0].Body["transactionId"] != v[0].Body["transactionId"] || s[0].Body["transactionId"] == "" {
		t.Fatalf("transaction ids differ: %v / %v", s[0].Body["transactionId"], v[0].Body["transactionId"])
	}

	out, err := scepEnroll(t, c.HTTPPort, filepath.Join(dir, "expired"), expired, "intune-dev-2")
	mustRefuse(t, "a ChallengeExpired challenge", out, err)
	if n := len(m.Calls("/successNotification")); n != 1 {
		t.Fatalf("%d successNotification calls after a refusal", n)
	}
}
