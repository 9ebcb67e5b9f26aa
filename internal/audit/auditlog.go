// Package audit is the "auditLog" plugin: the tamper-evident audit trail
// (docs/audit.md) and, as before, a JSON Lines file of certificate events.
//
// The trail is one hash chain of records in the shared database (every
// replica appends to it and serves it), with RFC 6962 checkpoints signed by
// a dedicated Ed25519 audit key and copied to a checkpoint file and an
// optional SIEM sink. The plugin is the daemon's plugins.Auditor, and
// records every certificate event from the durable outbox, idempotently by
// event id.
//
// The certificate event file keeps its old format. Delivery is at least
// once, so the plugin remembers the IDs of the last DedupWindow events in
// the file (read back from the file's tail when it is built) and writes
// each event once even when delivery is retried or the daemon restarts.
package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "auditLog"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return DefaultConfig() },
		New:       newPlugin,
	})
}

// newPlugin is the Factory's New.
func newPlugin(c plugins.Config, h plugins.Host) (plugins.Plugin, error) {
	p, err := New(c.(*Config))
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	if err := p.startTrail(c.(*Config), h); err != nil {
		return nil, err
	}
	return p, nil
}

// Config is the plugin's ca.json block.
type Config struct {
	// Path of the certificate event JSON Lines file; created (0600) if
	// missing.
	Path string `json:"path"`
	// Trail turns the audit trail on (default true; it needs a database).
	Trail *bool `json:"trail,omitempty"`
	// Key is the audit key that signs checkpoints: a file holding an
	// Ed25519 key (PKCS #8 PEM), created with Key+".pub" on first start
	// when absent, or a KMS key URI ("pkcs11:...", ECDSA P-256 or P-384)
	// that is never created. Default: secrets/audit_key next to the
	// directory of Path (init's layout: D/logs/certificates.jsonl →
	// D/secrets/audit_key).
	Key string `json:"key,omitempty"`
	// CheckpointFile receives every checkpoint as a JSON line. Default:
	// audit-checkpoints.jsonl next to Path.
	CheckpointFile string `json:"checkpointFile,omitempty"`
	// CheckpointEvery signs a checkpoint every so many records.
	CheckpointEvery int64 `json:"checkpointEvery"`
	// CheckpointInterval signs a checkpoint this often when records were
	// appended since the last one.
	CheckpointInterval config.Duration `json:"checkpointInterval"`
	// FailClosed refuses issuance and renewal while records cannot be
	// written, and makes every synchronous record wait for the database.
	FailClosed bool `json:"failClosed,omitempty"`
	// Retention deletes records older than this, up to a checkpoint; 0
	// keeps them forever, otherwise at least two years (BR §5.4.3).
	Retention config.Duration `json:"retention"`
	// Sink ships every record and checkpoint to a SIEM.
	Sink *SinkConfig `json:"sink,omitempty"`
}

// Defaults.
const (
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 5 * time.Minute
)

// DefaultConfig returns the block with its defaults.
func DefaultConfig() *Config {
	return &Config{CheckpointEvery: DefaultCheckpointEvery, CheckpointInterval: config.Duration{Duration: DefaultCheckpointInterval}}
}

// TrailEnabled reports whether the trail is on.
func (c *Config) TrailEnabled() bool { return c.Trail == nil || *c.Trail }

// Validate requires an absolute path and sane trail settings; it fills in
// the default key and checkpoint file.
func (c *Config) Validate() error {
	if c.Path == "" {
		return config.Errorf("path", "required")
	}
	if !filepath.IsAbs(c.Path) {
		return config.Errorf("path", "must be absolute, got %q", c.Path)
	}
	if c.Key == "" {
		c.Key = filepath.Join(filepath.Dir(filepath.Dir(c.Path)), "secrets", "audit_key")
	} else if !IsKMSURI(c.Key) && !filepath.IsAbs(c.Key) {
		return config.Errorf("key", "must be absolute, got %q", c.Key)
	}
	if c.CheckpointFile == "" {
		c.CheckpointFile = filepath.Join(filepath.Dir(c.Path), "audit-checkpoints.jsonl")
	} else if !filepath.IsAbs(c.CheckpointFile) {
		return config.Errorf("checkpointFile", "must be absolute, got %q", c.CheckpointFile)
	}
	if c.CheckpointEvery < 1 || c.CheckpointEvery > 1_000_000 {
		return config.Errorf("checkpointEvery", "must be between 1 and 1000000, got %d", c.CheckpointEvery)
	}
	if d := c.CheckpointInterval.Duration; d < time.Second || d > 24*time.Hour {
		return config.Errorf("checkpointInterval", "must be between 1s and 24h, got %s", d)
	}
	if d := c.Retention.Duration; d != 0 && d < MinRetention {
		return config.Errorf("retention", "must be 0 (keep forever) or at least %s (two years, BR 5.4.3), got %s", MinRetention, d)
	}
	if c.Sink != nil {
		return c.Sink.Validate()
	}
	return nil
}

// Line is one record in the file: the event without the certificate's DER,
// plus the certificate fields an auditor searches by.
type Line struct {
	plugins.CertificateEvent
	NotBefore string `json:"notBefore,omitempty"`
	NotAfter  string `json:"notAfter,omitempty"`
	Subject   string `json:"subject,omitempty"`
}

// DedupWindow is how many of the most recent event IDs the plugin
// remembers to suppress duplicates. A redelivery comes after a failed or
// unacknowledged delivery, within the event outbox's back-off (at most 10
// minutes) or at the next start; 10,000 events is far more than a CA
// writes in that time, in well under a megabyte.
const DedupWindow = 10_000

// tailBytes is how much of the end of the file New reads back: enough for
// DedupWindow lines of typical size, without reading a file of years.
const tailBytes = 8 << 20

// Plugin runs the trail and writes the certificate event file.
type Plugin struct {
	path  string
	mu    sync.Mutex
	seen  *recentIDs // IDs of the last events in the file
	trail *Trail     // nil when off or without a database
	log   *slog.Logger
}

// New returns the plugin with the IDs of the last events in the file
// loaded, so a redelivered event is not written twice. A missing file, or
// a missing directory, is not an error: the file is created (0600) on the
// first event, and while its directory is missing every delivery fails and
// is retried. A file that exists but cannot be read is an error.
func New(cfg *Config) (*Plugin, error) {
	seen, err := readIDs(cfg.Path, dedupWindow)
	if err != nil {
		return nil, err
	}
	return &Plugin{path: cfg.Path, seen: seen, log: slog.Default()}, nil
}

// dedupWindow is DedupWindow; tests make it small.
var dedupWindow = DedupWindow

// recentIDs is a set of at most size IDs that forgets the oldest first.
type recentIDs struct {
	ids   map[string]struct{}
	order []string // ring of the IDs in ids, oldest at next once full
	next  int
	size  int
}

func newRecentIDs(size int) *recentIDs {
	return &recentIDs{ids: make(map[string]struct{}, size), size: size}
}

func (r *recentIDs) has(id string) bool { _, ok := r.ids[id]; return ok }

// add remembers id, forgetting the oldest ID when full.
func (r *recentIDs) add(id string) {
	if r.has(id) {
		return
	}
	if len(r.order) < r.size {
		r.order = append(r.order, id)
	} else {
		delete(r.ids, r.order[r.next])
		r.order[r.next] = id
		r.next = (r.next + 1) % r.size
	}
	r.ids[id] = struct{}{}
}

// readIDs returns the IDs of the last size events in the file at path
// (none if it does not exist), read from its last tailBytes. Lines it
// cannot parse are skipped: a torn last line must not stop the daemon.
func readIDs(path string, size int) (*recentIDs, error) {
	seen := newRecentIDs(size)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return seen, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read audit log %s: %w", path, err)
	}
	partial := false
	if off := fi.Size() - tailBytes; fi.Mode().IsRegular() && off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return nil, fmt.Errorf("read audit log %s: %w", path, err)
		}
		partial = true // the first line read is the end of a longer one
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if partial {
			partial = false
			continue
		}
		var l struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.ID != "" {
			seen.add(l.ID)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read audit log %s: %w", path, err)
	}
	return seen, nil
}

// Name implements plugins.Plugin.
func (p *Plugin) Name() string { return Name }

// ObserveCertificate records the event in the trail (once per event id),
// then appends it to the file unless already written.
func (p *Plugin) ObserveCertificate(ctx context.Context, ev plugins.CertificateEvent) error {
	if p.trail != nil {
		if err := p.trail.recordEvent(ctx, ev.ID, eventRecord(ev)); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen.has(ev.ID) {
		return nil
	}
	line := Line{CertificateEvent: ev}
	if c, err := ev.Certificate(); err == nil {
		line.NotBefore = c.NotBefore.UTC().Format("2006-01-02T15:04:05Z")
		line.NotAfter = c.NotAfter.UTC().Format("2006-01-02T15:04:05Z")
		line.Subject = c.Subject.String()
	}
	line.CertificateDER = nil // keep the log small; the serial identifies it
	b, err := json.Marshal(line)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(p.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write audit log: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync audit log: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close audit log: %w", err)
	}
	p.seen.add(ev.ID)
	return nil
}

var _ plugins.CertificateObserver = (*Plugin)(nil)
