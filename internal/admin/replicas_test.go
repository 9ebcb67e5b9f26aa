package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/internal/testenv"
)

// GET /api/v1/replicas lists the heartbeats to a health:read token only.
func TestReplicasRoute(t *testing.T) {
	db := testenv.OpenStore(t, "bbolt")
	if err := db.CreateTable(storage.ReplicasTable); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for _, hb := range []storage.Heartbeat{
		{ID: "me|:9000|1-a", StartedAt: now.Add(-time.Hour), LastSeen: now, CRLLease: true, Status: "ok", FIPS: "off"},
		{ID: "other|:9000|2-b", StartedAt: now.Add(-2 * time.Hour), LastSeen: now.Add(-time.Minute), Status: "ok", FIPS: "off"},
	} {
		if err := storage.WriteHeartbeat(db, hb); err != nil {
			t.Fatal(err)
		}
	}
	tokens, err := NewTokenStore(db, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	_, health, _ := tokens.Create("health", []string{"health:read"}, 0)
	_, certs, _ := tokens.Create("certs", []string{"certificates:read"}, 0)
	r := chi.NewRouter()
	rep := &Replicas{DB: db, Now: func() time.Time { return now }, Self: "me|:9000|1-a", StaleAfter: 30 * time.Second}
	(&Server{Tokens: tokens}).Mount(r, rep.AdminRoutes())
	get := func(secret string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/api/v1/replicas", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		rr := httptest.NewRecorder()
		r.ServeHTTP(rr, req)
		return rr
	}
	if rr := get(certs); rr.Code != http.StatusForbidden {
		t.Fatalf("certificates:read token: %d", rr.Code)
	}
	if rr := get(""); rr.Code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", rr.Code)
	}
	rr := get(health)
	var out ReplicasResponse
	if err := json.Unmarshal(rr.Body.Bytes(), &out); err != nil || rr.Code != http.StatusOK {
		t.Fatalf("%d %s", rr.Code, rr.Body)
	}
	if len(out.Replicas) != 2 || !out.Replicas[0].Self || !out.Replicas[0].CRLLease || out.Replicas[0].Stale ||
		out.Replicas[1].Self || !out.Replicas[1].Stale || out.StaleAfter != "30s" {
		t.Fatalf("%+v", out)
	}
}
