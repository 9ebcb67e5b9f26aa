package audit

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stepfort/stepfort/plugins/plugintest"
)

func appendN(t *testing.T, tr *Trail, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := tr.Record(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// The live chain verifies incrementally, checks every checkpoint it
// passes, and reports the latest one.
func TestVerifyChainIncremental(t *testing.T) {
	h := plugintest.NewHost(t)
	tr := newTestTrail(t, h, 7)
	if st := tr.ChainStatus(); st.State != ChainPending || st.Checkpoint != nil {
		t.Fatalf("before any run: %+v", st)
	}
	appendN(t, tr, 0, 40)
	st := tr.VerifyChain(context.Background())
	if st.State != ChainOK || st.Verified != 40 || st.Size != 40 || st.Error != nil {
		t.Fatalf("first run: %+v", st)
	}
	cp := st.Checkpoint
	if cp == nil || cp.Size != 35 || !cp.SignatureValid || !cp.RootVerified || cp.KeyID != KeyID(tr.PublicKey()) {
		t.Fatalf("checkpoint: %+v", cp)
	}
	// A checkpoint signed at the size already verified is checked at the
	// next run.
	if _, err := tr.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if c := tr.ChainStatus().Checkpoint; c.Size != 40 || c.RootVerified {
		t.Fatalf("new checkpoint before a run: %+v", c)
	}
	appendN(t, tr, 40, 10)
	st = tr.VerifyChain(context.Background())
	if st.State != ChainOK || st.Verified != 50 || st.Checkpoint.Size != 49 || !st.Checkpoint.RootVerified {
		t.Fatalf("second run: %+v %+v", st, st.Checkpoint)
	}
	// The API answers the cached status.
	rr := httptest.NewRecorder()
	tr.serveStatus(rr, httptest.NewRequest(http.MethodGet, "/api/v1/audit/status", nil))
	var got map[string]any
	if err := json.Unmarshal(rr.Body.Bytes(), &got); err != nil || got["state"] != "ok" || got["verified"] != float64(50) {
		t.Fatalf("status API: %s", rr.Body)
	}
	c, _ := got["checkpoint"].(map[string]any)
	if c["signatureValid"] != true || c["rootVerified"] != true || c["size"] != float64(49) || c["root"] == "" || c["time"] == "" {
		t.Fatalf("status API checkpoint: %s", rr.Body)
	}
}

// A fresh verifier (a replica's start, or the hourly full run) names the
// first bad record of an edited, deleted or re-signed trail.
func TestVerifyChainDetectsTampering(t *testing.T) {
	cases := map[string]struct {
		edit func(t *testing.T, tr *Trail)
		seq  int64
		want string
	}{
		"edited record": {func(t *testing.T, tr *Trail) {
			b, err := tr.st.db.Get(recordsTable, seqKey(10))
			if err != nil {
				t.Fatal(err)
			}
			if err := tr.st.db.Set(recordsTable, seqKey(10), []byte(strings.Replace(string(b), `"n10"`, `"n1O"`, 1))); err != nil {
				t.Fatal(err)
			}
		}, 10, "does not match its hash"},
		"deleted record": {func(t *testing.T, tr *Trail) {
			if err := tr.st.db.Del(recordsTable, seqKey(5)); err != nil {
				t.Fatal(err)
			}
		}, 5, "missing"},
		"replaced checkpoint": {func(t *testing.T, tr *Trail) {
			c, err := sign(tr.o.Key, 14, [32]byte{1}, "2026-01-01T00:00:00Z")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(c)
			if err := tr.st.db.Set(checkpointsTable, seqKey(14), b); err != nil {
				t.Fatal(err)
			}
		}, 13, "do not hash to the root of checkpoint 14"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h := plugintest.NewHost(t)
			tr := newTestTrail(t, h, 7)
			appendN(t, tr, 0, 30)
			if st := tr.VerifyChain(context.Background()); st.State != ChainOK {
				t.Fatalf("clean: %+v", st)
			}
			tc.edit(t, tr)
			tr.restartVerification()
			st := tr.VerifyChain(context.Background())
			if st.State != ChainFailed || st.Error == nil || st.Error.Seq != tc.seq || !strings.Contains(st.Error.Reason, tc.want) {
				t.Fatalf("got %+v %+v, want failed at %d (%s)", st, st.Error, tc.seq, tc.want)
			}
			if st.Verified != tc.seq && !(tc.seq == 13 && st.Verified == 14) {
				t.Fatalf("verified through %d", st.Verified)
			}
		})
	}
}
