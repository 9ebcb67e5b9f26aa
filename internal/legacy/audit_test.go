package legacy

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stepfort/stepfort/internal/adcs"
	"github.com/stepfort/stepfort/plugins"
	"github.com/stepfort/stepfort/plugins/plugintest"
)

// TestImportAuditRecord: a refused and a partial import each leave one
// legacy.import record with the issuer, the file's base name and counts.
func TestImportAuditRecord(t *testing.T) {
	s := openTestStore(t, "bbolt")
	ca, other := newCA(t, "Corp Issuing CA 1"), newCA(t, "Other CA")
	dir := t.TempDir()
	foreign := row(3, -1, time.Time{})
	foreign.Certificate = other.leaf(t, foreign.Serial)
	f := export(t, dir, "db.txt", row(2, -1, time.Time{}), foreign, adcs.Row{RequestID: 4, Disposition: 9, Reason: -1})
	var audit plugintest.Auditor
	if _, err := s.Import([]string{f}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert, Audit: &audit}); !errors.Is(err, ErrRefused) {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Import([]string{f}, ImportOptions{Issuer: "corp", IssuerCert: ca.cert, AllowPartial: true, Audit: &audit,
		Actor: plugins.AuditActor{Kind: "system", Name: "test"}}); err != nil {
		t.Fatal(err)
	}
	recs := audit.Records()
	if len(recs) != 2 {
		t.Fatalf("records %+v", recs)
	}
	refused, done := recs[0], recs[1]
	if refused.Action != "legacy.import" || refused.Outcome != plugins.AuditFailure || refused.Reason == "" || refused.Details["refused"] != "1" ||
		refused.Details["written"] != "false" || refused.Object.Issuer != "corp" || refused.Details["files"] != filepath.Base(f) {
		t.Errorf("refused import: %+v", refused)
	}
	if done.Outcome != plugins.AuditSuccess || done.Details["new"] != "1" || done.Details["written"] != "true" || done.Actor.Name != "test" {
		t.Errorf("partial import: %+v", done)
	}
}
