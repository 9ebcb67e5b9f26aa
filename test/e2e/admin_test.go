package e2e

import (
	"net/http"
	"os/exec"
	"strings"
	"testing"
)

// TestAdminAPIAuth covers the admin API's authentication and authorization
// through HTTP and through the `stepfort tokens` commands.
func TestAdminAPIAuth(t *testing.T) {
	c := initCA(t)
	serve(t, c.Config, c.Password, c.Port)
	hc := apiClient(t, c)
	root := readToken(t, c)
	base := c.URL + "/api/v1"

	status, body := call(t, hc, "GET", base+"/tokens", "", nil)
	if status != http.StatusUnauthorized || body["status"] != float64(401) || body["message"] == "" {
		t.Fatalf("missing token: %d %v", status, body)
	}
	status, _ = call(t, hc, "GET", base+"/tokens", "sft_0123456789abcdef_forged", nil)
	if status != http.StatusUnauthorized {
		t.Fatalf("forged token: %d", status)
	}

	// A read-only token made with the CLI.
	cli := func(args ...string) (string, error) {
		full := append(args, "--ca-url", c.URL, "--root", c.Root, "--token", root)
		out, err := exec.Command(stepfortBin, full...).CombinedOutput()
		return string(out), err
	}
	out, err := cli("tokens", "create", "auditor", "--scope", "tokens:read", "--ttl", "1h")
	if err != nil {
		t.Fatalf("tokens create: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	reader := lines[len(lines)-1]
	if !strings.HasPrefix(reader, "sft_") {
		t.Fatalf("no secret printed:\n%s", out)
	}
	if status, body := call(t, hc, "GET", base+"/tokens", reader, nil); status != http.StatusOK || len(body["tokens"].([]any)) != 2 {
		t.Fatalf("read with tokens:read: %d %v", status, body)
	}
	status, body = call(t, hc, "POST", base+"/tokens", reader, map[string]any{"name": "x", "scopes": []string{"*"}})
	if status != http.StatusForbidden || !strings.Contains(body["message"].(string), `lacks scope "tokens:write"`) {
		t.Fatalf("write with tokens:read: %d %v", status, body)
	}
	// Bad input to the API is a 400 naming the field.
	status, body = call(t, hc, "POST", base+"/tokens", root, map[string]any{"name": "x", "scopes": []string{"not a scope"}})
	if status != http.StatusBadRequest || !strings.Contains(body["message"].(string), "scopes") {
		t.Fatalf("bad scope: %d %v", status, body)
	}
	status, body = call(t, hc, "POST", base+"/tokens", root, map[string]any{"name": "x", "scopes": []string{"*"}, "extra": 1})
	if status != http.StatusBadRequest {
		t.Fatalf("unknown field: %d %v", status, body)
	}

	// Revoke it with the CLI: it stops working at once.
	out, err = cli("tokens", "list", "--json")
	if err != nil || !strings.Contains(out, `"auditor"`) {
		t.Fatalf("tokens list: %v\n%s", err, out)
	}
	id := strings.Split(strings.TrimPrefix(reader, "sft_"), "_")[0]
	if out, err := cli("tokens", "revoke", id); err != nil || !strings.Contains(out, "Revoked token "+id) {
		t.Fatalf("tokens revoke: %v\n%s", err, out)
	}
	if status, _ := call(t, hc, "GET", base+"/tokens", reader, nil); status != http.StatusUnauthorized {
		t.Fatalf("revoked token: %d, want 401", status)
	}
	// The CLI reports API errors in one line naming the status.
	raw, err := exec.Command(stepfortBin, "tokens", "list", "--ca-url", c.URL, "--root", c.Root, "--token", reader).CombinedOutput()
	if err == nil || !strings.Contains(string(raw), "HTTP 401") {
		t.Fatalf("CLI with revoked token: %v\n%s", err, raw)
	}
	raw, err = exec.Command(stepfortBin, "tokens", "list", "--ca-url", c.URL, "--root", c.Root).CombinedOutput()
	if err == nil || !strings.Contains(string(raw), "--token: required") {
		t.Fatalf("CLI without token: %v\n%s", err, raw)
	}
	if status, body := call(t, hc, "GET", base+"/nope", root, nil); status != http.StatusNotFound || body["error"] != "not_found" {
		t.Fatalf("unknown endpoint: %d %v", status, body)
	}
}
