package setup

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/stepfort/stepfort/internal/audit"
)

// installDirs are the directories init writes into, under Options.Dir.
var installDirs = []string{"certs", "secrets", "config", "db", "logs", "templates"}

// existing is what the installation directory held before Init wrote
// anything: whether it existed, and the entries of it and of the
// directories init writes into (init writes nothing deeper).
type existing struct {
	dir        string
	dirExisted bool
	paths      map[string]bool
}

// snapshot records what dir holds now.
func snapshot(dir string) (*existing, error) {
	e := &existing{dir: dir, paths: map[string]bool{}}
	names, err := entries(dir)
	if errors.Is(err, os.ErrNotExist) {
		return e, nil
	}
	if err != nil {
		return nil, err
	}
	e.dirExisted = true
	for _, p := range names {
		e.paths[p] = true
	}
	for _, sub := range installDirs {
		names, err := entries(filepath.Join(dir, sub))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		for _, p := range names {
			e.paths[p] = true
		}
	}
	return e, nil
}

// undo removes what was created since the snapshot: new files in the
// install directories first, then new directories, then dir itself when
// Init created it. Entries that existed before stay, even if rewritten.
func (e *existing) undo() error {
	if !e.dirExisted {
		return os.RemoveAll(e.dir)
	}
	var errs []error
	for _, sub := range installDirs {
		names, err := entries(filepath.Join(e.dir, sub))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		for _, p := range names {
			if !e.paths[p] {
				errs = append(errs, os.RemoveAll(p))
			}
		}
	}
	names, err := entries(e.dir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range names {
		if !e.paths[p] {
			errs = append(errs, os.RemoveAll(p))
		}
	}
	return errors.Join(errs...)
}

// entries lists dir's entries as paths.
func entries(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(des))
	for _, d := range des {
		out = append(out, filepath.Join(dir, d.Name()))
	}
	return slices.Clip(out), nil
}

// writeAuditKey creates the audit trail's Ed25519 checkpoint key at
// r.AuditKeyFile (with .pub), which the auditLog plugin would otherwise
// create on first start, and records its key id. With a KMS the key still
// goes to disk (docs/hsm.md). A key left by an earlier installation
// (--force) is kept: a trail in a PostgreSQL database outlives a re-init,
// and its checkpoints verify with that key.
func writeAuditKey(r *Result, withKMS bool) error {
	if err := CheckSecretPath(r.AuditKeyFile); err != nil {
		return fmt.Errorf("audit key: %w", err)
	}
	key, err := audit.LoadOrCreateKey(r.AuditKeyFile)
	if err != nil {
		return err
	}
	r.AuditKeyID = audit.KeyID(key.Public().(ed25519.PublicKey))
	if withKMS {
		r.Notes = append(r.Notes, "The audit checkpoint key "+r.AuditKeyFile+" is on disk, not in the KMS (docs/hsm.md).")
	}
	return nil
}
