package admin

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// TestEveryCallIsAudited: successes, a bad token, a missing token, a
// wrong scope, token creation and revocation each leave records with the
// token's id and name or the remote address, and no record holds a secret.
func TestEveryCallIsAudited(t *testing.T) {
	f := newAPI(t, 0)
	a := &plugintest.Auditor{}
	f.store.Audit = a
	root := f.token("root", "*")
	reader := f.token("reader", "widgets:read")

	f.call(http.MethodGet, "/widgets", reader, "", nil)
	bad := root[:len(root)-3] + "xyz"
	f.call(http.MethodGet, "/widgets", bad, "", nil)
	f.call(http.MethodGet, "/widgets", "", "", nil)
	f.call(http.MethodGet, "/tokens", reader, "", nil)
	var created CreateTokenResponse
	f.call(http.MethodPost, "/tokens", root, `{"name":"ci","scopes":["widgets:read"]}`, &created)
	f.call(http.MethodDelete, "/tokens/"+created.Token.ID, root, "", nil)
	f.call(http.MethodGet, "/nope", root, "", nil)

	recs := a.Records()
	find := func(action string, outcome plugins.AuditOutcome, status string) *plugins.AuditRecord {
		for i := range recs {
			r := &recs[i]
			if r.Action == action && r.Outcome == outcome && (status == "" || r.Details["status"] == status) {
				return r
			}
		}
		t.Fatalf("no %s/%s/%s record in %+v", action, outcome, status, recs)
		return nil
	}
	if r := find("admin.request", plugins.AuditSuccess, "200"); r.Actor.Name != "reader" || r.Actor.ID == "" {
		t.Errorf("success actor = %+v", r.Actor)
	}
	r := find("admin.request", plugins.AuditDenied, "401")
	if r.Actor.Kind != "anonymous" || r.Actor.RemoteAddr == "" || r.Reason == "" {
		t.Errorf("bad token record = %+v", r)
	}
	if r := find("admin.request", plugins.AuditDenied, "403"); r.Actor.Name != "reader" || !strings.Contains(r.Reason, "tokens:read") {
		t.Errorf("forbidden record = %+v", r)
	}
	if r := find("admin.token.create", plugins.AuditSuccess, ""); r.Object.Token != created.Token.ID || r.Actor.Name != "root" {
		t.Errorf("create record = %+v", r)
	}
	find("admin.token.revoke", plugins.AuditSuccess, "")
	find("admin.request", plugins.AuditFailure, "404")
	b, _ := json.Marshal(recs)
	for _, secret := range []string{root, reader, created.Secret, strings.SplitN(root, "_", 3)[2], strings.SplitN(created.Secret, "_", 3)[2]} {
		if strings.Contains(string(b), secret) {
			t.Fatalf("a record holds a token secret: %s", b)
		}
	}
}
