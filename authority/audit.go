package authority

import (
	"context"
	"log/slog"

	"github.com/stepfort/stepfort/plugins"
)

// logAuditor writes audit records to the daemon log, one "audit" line
// each. It never fails, so it never refuses an action.
type logAuditor struct{ log *slog.Logger }

func (a logAuditor) Record(ctx context.Context, r plugins.AuditRecord) error {
	a.log.LogAttrs(ctx, slog.LevelInfo, "audit",
		slog.String("action", r.Action), slog.String("outcome", string(r.Outcome)), slog.String("reason", r.Reason),
		slog.Any("actor", r.Actor), slog.Any("object", r.Object), slog.Any("details", r.Details))
	return nil
}
