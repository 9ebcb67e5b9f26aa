package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/user"

	"github.com/smallstep/nosql"

	"github.com/stepfort/stepfort/internal/audit"
	"github.com/stepfort/stepfort/plugins"
)

// importAudit opens the audit trail of the CA configured in cfg on db, so
// an import that runs as a command (not in the daemon) still leaves its
// legacy.import record in the one chain. It returns a nil Auditor when the
// CA has no trail (no auditLog plugin, or its trail switched off). close
// appends what is queued and signs a checkpoint with the audit key.
func importAudit(cfg string, db nosql.DB) (a plugins.Auditor, closeTrail func(), err error) {
	ac, err := auditConfigOf(cfg)
	if err != nil || ac == nil || !ac.TrailEnabled() {
		return nil, func() {}, err
	}
	key, err := audit.LoadSigner(ac.Key)
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tr, err := audit.NewTrail(db, audit.TrailOptions{Key: key, Replica: plugins.ReplicaID(host, "", os.Getpid(), "migrate"),
		FailClosed: true, CheckpointEvery: ac.CheckpointEvery, CheckpointFile: ac.CheckpointFile})
	if err != nil {
		return nil, nil, fmt.Errorf("open the audit trail: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	return tr, func() { cancel(); <-done }, nil
}

// auditConfigOf reads stepfort.plugins.auditLog of ca.json with its
// defaults; nil when the block is absent.
func auditConfigOf(cfg string) (*audit.Config, error) {
	b, err := os.ReadFile(cfg)
	if err != nil {
		return nil, err
	}
	var f struct {
		Stepfort struct {
			Plugins map[string]json.RawMessage `json:"plugins"`
		} `json:"stepfort"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg, err)
	}
	raw, ok := f.Stepfort.Plugins["auditLog"]
	if !ok {
		return nil, nil
	}
	ac := audit.DefaultConfig()
	if err := json.Unmarshal(raw, ac); err != nil {
		return nil, fmt.Errorf("%s: stepfort.plugins.auditLog: %w", cfg, err)
	}
	if err := ac.Validate(); err != nil {
		return nil, fmt.Errorf("%s: stepfort.plugins.auditLog.%w", cfg, err)
	}
	return ac, nil
}

// commandActor names who ran a command, for the audit record.
func commandActor() plugins.AuditActor {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return plugins.AuditActor{Kind: "system", ID: "cli", Name: name}
}
