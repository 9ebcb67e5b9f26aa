package plugintest

import (
	"context"
	"sync"

	"github.com/stepfort/stepfort/plugins"
)

// Auditor is a plugins.Auditor that keeps the records in memory, for
// tests. It is safe for concurrent use; the zero value is ready.
type Auditor struct {
	mu   sync.Mutex
	recs []plugins.AuditRecord
}

// Record implements plugins.Auditor.
func (a *Auditor) Record(_ context.Context, r plugins.AuditRecord) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recs = append(a.recs, r)
	return nil
}

// Records returns a copy of the records, oldest first.
func (a *Auditor) Records() []plugins.AuditRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]plugins.AuditRecord(nil), a.recs...)
}
