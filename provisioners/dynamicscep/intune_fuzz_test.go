package dynamicscep

import (
	"errors"
	"testing"
)

// FuzzIntuneResponse: the parsers of Intune's, Entra ID's and Graph's
// answers never panic, and only a 2xx {"code":"Success"} is a success.
func FuzzIntuneResponse(f *testing.F) {
	for _, s := range []string{
		`{"code":"Success","errorDescription":""}`,
		`{"code":"ChallengeExpired","errorDescription":"expired"}`,
		`{"code":""}`, `{"code":1}`, `[]`, `null`, `{`, "",
		`{"token_type":"Bearer","expires_in":3599,"access_token":"t"}`,
		`{"token_type":"Bearer","expires_in":"3599","access_token":"t"}`,
		`{"error":"invalid_client","error_description":"AADSTS7000215"}`,
		`{"value":[{"providerName":"ScepRequestValidationFEService","uri":"https://x/y"}]}`,
	} {
		f.Add(200, []byte(s))
		f.Add(500, []byte(s))
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		a, err := ParseIntuneResponse(status, body)
		if err == nil && (a.Code != IntuneSuccess || status < 200 || status > 299) {
			t.Fatalf("accepted %d %q", status, body)
		}
		var ce *intuneCodeError
		if errors.As(err, &ce) && ce.Code == IntuneSuccess {
			t.Fatal("Success as a refusal")
		}
		if tok, life, err := parseTokenResponse(status, body); err == nil && (tok == "" || life <= 0 || status != 200) {
			t.Fatalf("token accepted from %d %q", status, body)
		}
		if u, err := parseEndpoints(status, body); err == nil && (len(u) < 9 || u[:8] != "https://") {
			t.Fatalf("endpoint %q accepted", u)
		}
	})
}
