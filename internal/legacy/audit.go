package legacy

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stepfort/stepfort/plugins"
)

// ImportRecord is the legacy.import audit record of an import: the issuer,
// the files (base names) and the report's counts; failure with the error.
// A dry run is recorded too (Details["dryRun"]), as it read the exports.
func ImportRecord(o ImportOptions, files []string, rep *Report, err error) plugins.AuditRecord {
	actor := o.Actor
	if actor.Kind == "" {
		actor = plugins.AuditActor{Kind: "system", Name: "stepfort migrate adcs import"}
	}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	det := map[string]string{"files": strings.Join(names, " "), "dryRun": strconv.FormatBool(o.DryRun)}
	if rep != nil {
		for k, v := range map[string]int{"rows": rep.Rows, "imported": rep.Imported, "skipped": rep.Skipped, "refused": rep.Refused,
			"new": rep.New, "changed": rep.Changed, "crlOnly": rep.CRLOnly, "revocationsAdded": rep.RevocationsAdded,
			"revocationsChanged": rep.RevocationsChanged} {
			det[k] = strconv.Itoa(v)
		}
		det["written"] = strconv.FormatBool(rep.Written)
		det["crlNumberFloor"] = strconv.FormatInt(rep.CRLNumberFloor, 10)
	}
	r := plugins.AuditRecord{Action: "legacy.import", Outcome: plugins.AuditSuccess, Actor: actor,
		Object: plugins.AuditObject{Issuer: o.Issuer}, Details: det}
	if err != nil {
		r.Outcome, r.Reason = plugins.AuditFailure, err.Error()
	}
	return r
}

// auditImport writes the import's record when the options name a trail.
func auditImport(o ImportOptions, files []string, rep *Report, err error) {
	if o.Audit == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = o.Audit.Record(ctx, ImportRecord(o, files, rep, err))
}
