// Package audit is the "auditLog" plugin: it appends every certificate
// event (issued, renewed, revoked) to a JSON Lines file, an audit trail an
// operator can ship to a SIEM. Delivery is at least once, so the plugin
// remembers the IDs of the last DedupWindow events in the file (read back
// from the file's tail when it is built) and writes each event once even
// when delivery is retried or the daemon restarts. The memory this takes is
// bounded: an event redelivered after more than DedupWindow newer events
// were written would be written again (consumers can de-duplicate by id).
package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/stepfort/stepfort/config"
	"github.com/stepfort/stepfort/plugins"
)

// Name is the plugin's key under stepfort.plugins.
const Name = "auditLog"

func init() {
	plugins.Register(plugins.Factory{
		Name:      Name,
		NewConfig: func() plugins.Config { return &Config{} },
		New:       newPlugin,
	})
}

// newPlugin is the Factory's New. The audit log needs nothing from the
// host: it only observes events.
func newPlugin(c plugins.Config, _ plugins.Host) (plugins.Plugin, error) {
	p, err := New(c.(*Config))
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	return p, nil
}

// Config is the plugin's ca.json block.
type Config struct {
	// Path of the JSON Lines file; created (0600) if missing.
	Path string `json:"path"`
}

// Validate requires an absolute path.
func (c *Config) Validate() error {
	if c.Path == "" {
		return config.Errorf("path", "required")
	}
	if !filepath.IsAbs(c.Path) {
		return config.Errorf("path", "must be absolute, got %q", c.Path)
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

// Plugin writes the audit file. It is a plugins.CertificateObserver and
// nothing else: it needs no background work and holds no open file.
type Plugin struct {
	path string
	mu   sync.Mutex
	seen *recentIDs // IDs of the last events in the file
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
	return &Plugin{path: cfg.Path, seen: seen}, nil
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

// ObserveCertificate appends the event, unless already written.
func (p *Plugin) ObserveCertificate(_ context.Context, ev plugins.CertificateEvent) error {
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
