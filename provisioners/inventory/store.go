package inventory

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
	"github.com/stepfort/stepfort/plugins"
)

// Tables; the key layout is documented in docs/inventory.md.
var (
	// DevicesTable maps a device ID to its JSON Device.
	DevicesTable = []byte("stepfort_inventory_devices")
	// IdentifiersTable maps a permanent identifier to the ID of the one
	// device that claims it. Claims are made with CmpAndSwap(nil -> id) so
	// two devices can never hold the same identifier, on any replica.
	IdentifiersTable = []byte("stepfort_inventory_identifiers")
	// CollectionsTable maps a collection name to its JSON Collection.
	CollectionsTable = []byte("stepfort_inventory_collections")
)

// Errors the API maps to HTTP statuses.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid")
)

// Store keeps the inventory in the shared nosql database.
type Store struct {
	db  nosql.DB
	now func() time.Time
	// events records a device event in the transaction that disables or
	// removes a device; nil records none (see WithEvents).
	events plugins.EventRecorder
	log    *slog.Logger
	// importMu serializes Import in this process; across replicas the
	// identifier claims (CmpAndSwap) keep the index consistent.
	importMu sync.Mutex
	// importSlot is held by the one import request being parsed and
	// written (see AcquireImport).
	importSlot chan struct{}
	// indexed: on PostgreSQL the device table has a trigram index over
	// its values (storage.EnsureMatchIndex), which List's searches and
	// filters use.
	indexed bool
}

// StoreOption configures a Store.
type StoreOption func(*Store)

// WithEvents makes the store record a durable plugins.DeviceEvent in the
// same transaction as every change that disables a device
// (plugins.DeviceDisabled) or removes one (plugins.DeviceRemoved), so
// DeviceObservers (the device-attest plugin revokes the device's
// certificates) learn of it even if this process dies right after the
// commit. Give it to the store that serves admin changes; a store that
// only reads devices and records attestations does not need it.
func WithEvents(r plugins.EventRecorder) StoreOption {
	return func(s *Store) { s.events = r }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) StoreOption {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// NewStore creates the tables if needed. now may be nil (time.Now).
func NewStore(db nosql.DB, now func() time.Time, opts ...StoreOption) (*Store, error) {
	if db == nil {
		return nil, errors.New("inventory: a database is required")
	}
	if now == nil {
		now = time.Now
	}
	for _, t := range [][]byte{DevicesTable, IdentifiersTable, CollectionsTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("create table %s: %w", t, err)
		}
	}
	// Fail closed, as the certificate index does: without the index a
	// search on PostgreSQL reads the whole device table.
	indexed, err := storage.EnsureMatchIndex(db, DevicesTable)
	if err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	s := &Store{db: db, now: now, log: slog.Default(), importSlot: make(chan struct{}, 1), indexed: indexed}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// AcquireImport waits until no other import request of this process is
// being parsed or written, or until ctx ends (then it returns ctx's
// error). Parsing is serialised with writing so that only one import body
// is held in memory at a time. Call release when the import is done.
func (s *Store) AcquireImport(ctx context.Context) (release func(), err error) {
	select {
	case s.importSlot <- struct{}{}:
		return func() { <-s.importSlot }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	// Time first so IDs (and list pages) roughly follow creation order.
	return fmt.Sprintf("dev_%013x%s", time.Now().UnixMicro(), hex.EncodeToString(b))
}

// DeviceInput is what an admin (API, CLI, import row) gives to create or
// upsert a device. EKPublic and EKCert are PEM, DER or base64 DER.
type DeviceInput struct {
	Identifiers []string          `json:"identifiers,omitempty"`
	EKPublic    string            `json:"ekPublic,omitempty"`
	EKCert      string            `json:"ekCertificate,omitempty"`
	Name        string            `json:"name,omitempty"`
	Type        string            `json:"type,omitempty"`
	OS          string            `json:"os,omitempty"`
	Serial      string            `json:"serial,omitempty"`
	Collection  string            `json:"collection,omitempty"`
	Owner       string            `json:"owner,omitempty"`
	Source      string            `json:"source,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Status      Status            `json:"status,omitempty"`
}

// build turns input into a device (without ID and times). The EK URN is
// computed here, never taken from the caller.
func (in *DeviceInput) build() (*Device, error) {
	d := &Device{
		Name: strings.TrimSpace(in.Name), Type: strings.TrimSpace(in.Type), OS: strings.TrimSpace(in.OS),
		Serial: strings.TrimSpace(in.Serial), Collection: strings.TrimSpace(in.Collection),
		Owner: strings.TrimSpace(in.Owner), Source: strings.TrimSpace(in.Source), Metadata: in.Metadata, Status: in.Status,
	}
	if d.Status == "" {
		d.Status = StatusActive
	}
	var ekURN string
	if in.EKCert != "" {
		c, err := ParseEKCertificate([]byte(in.EKCert))
		if err != nil {
			return nil, err
		}
		d.EKCert = c.Raw
		pub, canon, err := ParseEKPublic(c.RawSubjectPublicKeyInfo)
		if err != nil {
			return nil, fmt.Errorf("EK certificate: %w", err)
		}
		d.EKPublic = canon
		if ekURN, err = EKURN(pub); err != nil {
			return nil, err
		}
	}
	if in.EKPublic != "" {
		pub, canon, err := ParseEKPublic([]byte(in.EKPublic))
		if err != nil {
			return nil, err
		}
		if d.EKPublic != nil && !bytes.Equal(d.EKPublic, canon) {
			return nil, errors.New("EK certificate does not match the EK public key")
		}
		d.EKPublic = canon
		if ekURN, err = EKURN(pub); err != nil {
			return nil, err
		}
	}
	seen := map[string]bool{}
	add := func(id string) {
		id = strings.TrimSpace(id)
		if id != "" && !seen[id] {
			seen[id] = true
			d.Identifiers = append(d.Identifiers, id)
		}
	}
	if ekURN != "" {
		add(ekURN)
	}
	for _, id := range in.Identifiers {
		if IsEKURN(strings.TrimSpace(id)) && ekURN != "" && strings.TrimSpace(id) != ekURN {
			return nil, fmt.Errorf("identifier %q is an EK URN that does not match the EK given", id)
		}
		add(id)
	}
	if len(d.Identifiers) == 0 && d.Serial != "" {
		add(d.Serial) // non-TPM devices are known by serial number (or UDID)
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	return d, nil
}

func (s *Store) getDevice(id string) (*Device, []byte, error) {
	b, err := s.db.Get(DevicesTable, []byte(id))
	if database.IsErrNotFound(err) {
		return nil, nil, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read device %q: %w", id, err)
	}
	var d Device
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, nil, fmt.Errorf("decode device %q: %w", id, err)
	}
	return &d, b, nil
}

// Get returns a device by ID.
func (s *Store) Get(id string) (*Device, error) {
	d, _, err := s.getDevice(id)
	return d, err
}

// ByIdentifier returns the device that claims a permanent identifier.
func (s *Store) ByIdentifier(pid string) (*Device, error) {
	b, err := s.db.Get(IdentifiersTable, []byte(pid))
	if database.IsErrNotFound(err) {
		return nil, fmt.Errorf("identifier %q: %w", pid, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read identifier %q: %w", pid, err)
	}
	d, err := s.Get(string(b))
	if err != nil {
		return nil, err
	}
	// A stale index entry (a crash between writes) must not resolve.
	for _, x := range d.Identifiers {
		if x == pid {
			return d, nil
		}
	}
	return nil, fmt.Errorf("identifier %q: %w", pid, ErrNotFound)
}

// claim makes id the holder of each identifier, or claims none.
func (s *Store) claim(id string, pids []string) error {
	var done []string
	for _, pid := range pids {
		// storage.CmpAndSwap: nosql's compare with an absent row is not
		// atomic on PostgreSQL, where two replicas could both claim pid.
		cur, ok, err := storage.CmpAndSwap(s.db, IdentifiersTable, []byte(pid), nil, []byte(id))
		if err != nil {
			s.release(id, done)
			return fmt.Errorf("claim identifier %q: %w", pid, err)
		}
		if !ok && string(cur) != id {
			s.release(id, done)
			return fmt.Errorf("identifier %q already belongs to device %s: %w", pid, cur, ErrConflict)
		}
		done = append(done, pid)
	}
	return nil
}

// release drops claims held by id (best effort; a leftover claim on a
// deleted device does not resolve, see ByIdentifier).
func (s *Store) release(id string, pids []string) {
	for _, pid := range pids {
		if cur, err := s.db.Get(IdentifiersTable, []byte(pid)); err == nil && string(cur) == id {
			_ = s.db.Del(IdentifiersTable, []byte(pid))
		}
	}
}

func (s *Store) checkCollection(name string) error {
	if name == "" {
		return nil
	}
	if _, err := s.GetCollection(name); err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("collection %q does not exist: %w", name, ErrInvalid)
		}
		return err
	}
	return nil
}

// Create registers a new device.
func (s *Store) Create(in DeviceInput) (*Device, error) {
	d, err := in.build()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if d.Source == "" {
		d.Source = "manual"
	}
	if err := s.checkCollection(d.Collection); err != nil {
		return nil, err
	}
	d.ID = newID()
	d.CreatedAt = s.now().UTC()
	d.UpdatedAt = d.CreatedAt
	if err := s.claim(d.ID, d.Identifiers); err != nil {
		return nil, err
	}
	b, _ := json.Marshal(d)
	if err := s.db.Set(DevicesTable, []byte(d.ID), b); err != nil {
		s.release(d.ID, d.Identifiers)
		return nil, fmt.Errorf("write device: %w", err)
	}
	return d, nil
}

// DevicePatch changes some fields of a device; nil fields are kept.
type DevicePatch struct {
	AddIdentifiers    []string           `json:"addIdentifiers,omitempty"`
	RemoveIdentifiers []string           `json:"removeIdentifiers,omitempty"`
	Name              *string            `json:"name,omitempty"`
	Type              *string            `json:"type,omitempty"`
	OS                *string            `json:"os,omitempty"`
	Serial            *string            `json:"serial,omitempty"`
	Collection        *string            `json:"collection,omitempty"`
	Owner             *string            `json:"owner,omitempty"`
	Metadata          *map[string]string `json:"metadata,omitempty"`
	Status            *Status            `json:"status,omitempty"`
}

// Update applies a patch with optimistic concurrency (compare-and-swap on
// the stored record, retried). A patch that disables an active device
// records a plugins.DeviceDisabled event with the change (WithEvents).
func (s *Store) Update(id string, p DevicePatch) (*Device, error) {
	return s.modify(id, func(d *Device) error {
		set := func(dst *string, v *string) {
			if v != nil {
				*dst = strings.TrimSpace(*v)
			}
		}
		set(&d.Name, p.Name)
		set(&d.Type, p.Type)
		set(&d.OS, p.OS)
		set(&d.Serial, p.Serial)
		set(&d.Collection, p.Collection)
		set(&d.Owner, p.Owner)
		if p.Metadata != nil {
			d.Metadata = *p.Metadata
		}
		if p.Status != nil {
			d.Status = *p.Status
		}
		for _, r := range p.RemoveIdentifiers {
			d.Identifiers = removeString(d.Identifiers, r)
		}
		for _, a := range p.AddIdentifiers {
			a = strings.TrimSpace(a)
			if IsEKURN(a) {
				return fmt.Errorf("%w: EK URNs are computed from an EK; register the EK instead", ErrInvalid)
			}
			if a != "" && !contains(d.Identifiers, a) {
				d.Identifiers = append(d.Identifiers, a)
			}
		}
		if p.Collection != nil {
			if err := s.checkCollection(d.Collection); err != nil {
				return err
			}
		}
		if err := d.validate(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		return nil
	})
}

// modify runs fn on the stored device and writes it back atomically,
// claiming added identifiers and releasing removed ones. A change that
// disables an active device carries its event (writeDevice).
func (s *Store) modify(id string, fn func(d *Device) error) (*Device, error) {
	for range 5 {
		d, old, err := s.getDevice(id)
		if err != nil {
			return nil, err
		}
		before := append([]string(nil), d.Identifiers...)
		wasActive := d.Active()
		if err := fn(d); err != nil {
			return nil, err
		}
		added, removed := difference(d.Identifiers, before), difference(before, d.Identifiers)
		if err := s.claim(id, added); err != nil {
			return nil, err
		}
		d.UpdatedAt = s.now().UTC()
		b, _ := json.Marshal(d)
		var ev *plugins.DeviceEvent
		if wasActive && !d.Active() {
			ev = &plugins.DeviceEvent{Kind: plugins.DeviceDisabled, DeviceID: id, Device: b}
		}
		op := &database.TxEntry{Bucket: DevicesTable, Key: []byte(id), CmpValue: old, Value: b, Cmd: database.CmpAndSwap}
		swapped, err := s.writeDevice(op, ev)
		if err != nil {
			s.release(id, added)
			return nil, err
		}
		if !swapped {
			s.release(id, added)
			continue // changed underneath us: re-read and retry
		}
		s.release(id, removed)
		return d, nil
	}
	return nil, fmt.Errorf("device %q is being changed concurrently: %w", id, ErrConflict)
}

// writeDevice commits op, one write of a device row, in one transaction
// with ev, the event the write causes (nil if none), so the event exists
// if and only if the change was committed. It reports whether op took
// effect: false for a compare-and-swap that did not swap, whose event is
// then discarded (nosql does not roll a transaction back for a failed
// compare-and-swap, so the event row was committed regardless).
func (s *Store) writeDevice(op *database.TxEntry, ev *plugins.DeviceEvent) (bool, error) {
	tx := &database.Tx{Operations: []*database.TxEntry{op}}
	if err := s.addEvent(tx, ev); err != nil {
		return false, err
	}
	if err := s.db.Update(tx); err != nil {
		// The transaction was rolled back, event included: nothing to
		// discard. (Were it committed after all, the event is delivered by
		// the next sweep and its observers act on the device as stored.)
		return false, fmt.Errorf("%s device %q: %w", op.Cmd, op.Key, err)
	}
	swapped := op.Cmd != database.CmpAndSwap || op.Swapped
	s.settleEvent(ev, swapped)
	return swapped, nil
}

// addEvent adds ev to tx if the store records events.
func (s *Store) addEvent(tx *database.Tx, ev *plugins.DeviceEvent) error {
	if ev == nil || s.events == nil {
		return nil
	}
	if err := s.events.AddDeviceEvent(tx, ev); err != nil {
		return fmt.Errorf("record %s event for device %s: %w", ev.Kind, ev.DeviceID, err)
	}
	return nil
}

// settleEvent tells the recorder about a committed event: announce it if
// the change it describes happened, so this replica delivers it at once,
// or discard it if it did not.
func (s *Store) settleEvent(ev *plugins.DeviceEvent, happened bool) {
	if ev == nil || s.events == nil {
		return
	}
	if happened {
		s.events.Announce(ev.ID)
		return
	}
	if err := s.events.Discard(ev.ID); err != nil {
		// Delivered anyway, the event is harmless: observers act on the
		// device as it is then, not as the event says.
		s.log.Warn("discard device event of a lost write", "event", "inventory.discard_failed", "id", ev.ID, "device", ev.DeviceID, "error", err)
	}
}

// RecordAttestation stores the last successful AK enrollment and last-seen
// time on a device.
func (s *Store) RecordAttestation(id string, a Attestation) error {
	_, err := s.modify(id, func(d *Device) error {
		at := a.At
		d.LastSeenAt = &at
		d.LastAttestation = &a
		return nil
	})
	return err
}

// Delete removes a device and releases its identifiers. The removal
// records a plugins.DeviceRemoved event with the record as it was
// (WithEvents).
func (s *Store) Delete(id string) (*Device, error) {
	d, old, err := s.getDevice(id)
	if err != nil {
		return nil, err
	}
	// The delete is unconditional: a concurrent change to the record does
	// not save the device, so the event stays true either way.
	op := &database.TxEntry{Bucket: DevicesTable, Key: []byte(id), Cmd: database.Delete}
	ev := &plugins.DeviceEvent{Kind: plugins.DeviceRemoved, DeviceID: id, Device: old}
	if _, err := s.writeDevice(op, ev); err != nil {
		return nil, err
	}
	s.release(id, d.Identifiers)
	return d, nil
}

// ListOptions filter and page a device listing.
type ListOptions struct {
	Collection string
	Status     Status
	Owner      string
	Type       string
	Source     string
	Query      string // substring of name, serial or an identifier
	Cursor     string // return devices with ID > Cursor
	Limit      int    // default 100, at most 1000
}

// List returns one page of devices ordered by ID and the cursor of the
// next page ("" at the end). It reads from the cursor on, not the whole
// table: the filters are pushed down to the store as a raw-value
// prefilter (storage.ForEachPageMatch: a bbolt cursor walk that skips
// non-matching rows without decoding them, a WHERE clause on
// PostgreSQL answered from a trigram index over the stored values), and
// the rows that pass are decoded and checked exactly.
func (s *Store) List(o ListOptions) ([]*Device, string, error) {
	if o.Limit <= 0 {
		o.Limit = 100
	}
	if o.Limit > 1000 {
		o.Limit = 1000
	}
	var after []byte
	if o.Cursor != "" {
		after = []byte(o.Cursor)
	}
	m := o.prefilter()
	m.Indexed = s.indexed
	out, next, err := storage.CollectPage(s.db, DevicesTable, after, o.Limit, m, func(k, v []byte) (*Device, bool, error) {
		var d Device
		if err := json.Unmarshal(v, &d); err != nil {
			return nil, false, fmt.Errorf("decode device %q: %w", k, err)
		}
		return &d, o.match(&d), nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list devices: %w", err)
	}
	return out, string(next), nil
}

// countFields are the fields ListOptions.match reads: a count decodes
// these only (the EK certificate and the rest are skipped).
type countFields struct {
	Identifiers []string `json:"identifiers"`
	Name        string   `json:"name"`
	Type        string   `json:"type"`
	Serial      string   `json:"serial"`
	Collection  string   `json:"collection"`
	Owner       string   `json:"owner"`
	Source      string   `json:"source"`
	Status      Status   `json:"status"`
}

// Count counts the devices o's filters select (Cursor and Limit are
// ignored): the same prefilter and exact match as List, over the whole
// table. When the prefilter is exact for devices without metadata
// (prefilterExact) those are counted on it alone, in the database on
// PostgreSQL (storage.CountMatch); the rest are decoded and matched.
func (s *Store) Count(o ListOptions) (int, error) {
	m := o.prefilter()
	decide := func(k, v []byte) (bool, error) {
		var f countFields
		if err := json.Unmarshal(v, &f); err != nil {
			return false, fmt.Errorf("decode device %q: %w", k, err)
		}
		d := Device{Identifiers: f.Identifiers, Name: f.Name, Type: f.Type, Serial: f.Serial,
			Collection: f.Collection, Owner: f.Owner, Source: f.Source, Status: f.Status}
		return o.match(&d), nil
	}
	var unsure []byte
	if o.prefilterExact() {
		// Devices without metadata are counted by the prefilter alone,
		// in the database on PostgreSQL; those with metadata are decoded.
		unsure = metadataKey
	} else {
		// A search needle: every device the prefilter keeps is decoded
		// (the trigram index narrows them on PostgreSQL).
		m.Indexed = s.indexed
	}
	n, err := storage.CountMatch(s.db, DevicesTable, m, unsure, decide)
	if err != nil {
		return 0, fmt.Errorf("count devices: %w", err)
	}
	return n, nil
}

// metadataKey starts the only object in a stored device whose keys are
// not the Device type's own: a metadata key "status" could fake a filter.
var metadataKey = []byte(`"metadata":`)

// prefilterExact reports whether o's prefilter decides a device by
// itself when the stored JSON has no metadata: no search needle, and
// every set filter is a `"key":"value"` test (plainJSON values). The
// filter keys (status, collection, owner, type, source) are each a key of
// the Device object only, nowhere else in its JSON
// (TestFilterKeysOccurOnce), and json.Marshal escapes quotes inside
// strings, so the test holds exactly when the field has that value.
func (o *ListOptions) prefilterExact() bool {
	if o.Query != "" {
		return false
	}
	for _, v := range []string{string(o.Status), o.Collection, o.Owner, o.Type, o.Source} {
		if v != "" && !plainJSON(v) {
			return false
		}
	}
	return true
}

// prefilter is what the store can test on a device's stored JSON
// (json.Marshal output) before decoding it: a superset of what match
// keeps. A filter value with characters json.Marshal escapes, or a
// non-ASCII search, is left to match alone.
func (o *ListOptions) prefilter() storage.Match {
	var m storage.Match
	for _, f := range []struct{ key, val string }{
		{"status", string(o.Status)}, {"collection", o.Collection}, {"owner", o.Owner}, {"type", o.Type}, {"source", o.Source},
	} {
		if f.val != "" && plainJSON(f.val) {
			m.Contains = append(m.Contains, []byte(`"`+f.key+`":"`+f.val+`"`))
		}
	}
	if q := strings.ToLower(o.Query); storage.FoldableNeedle(q) {
		m.Folded = []byte(q)
	}
	return m
}

// plainJSON reports whether json.Marshal writes s between its quotes as
// it is.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func (o *ListOptions) match(d *Device) bool {
	switch {
	case o.Collection != "" && d.Collection != o.Collection,
		o.Status != "" && d.Status != o.Status,
		o.Owner != "" && d.Owner != o.Owner,
		o.Type != "" && d.Type != o.Type,
		o.Source != "" && d.Source != o.Source:
		return false
	}
	if o.Query == "" {
		return true
	}
	q := strings.ToLower(o.Query)
	if strings.Contains(strings.ToLower(d.Name), q) || strings.Contains(strings.ToLower(d.Serial), q) {
		return true
	}
	for _, id := range d.Identifiers {
		if strings.Contains(strings.ToLower(id), q) {
			return true
		}
	}
	return false
}

// GetCollection returns a collection by name.
func (s *Store) GetCollection(name string) (*Collection, error) {
	b, err := s.db.Get(CollectionsTable, []byte(name))
	if database.IsErrNotFound(err) {
		return nil, fmt.Errorf("collection %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read collection %q: %w", name, err)
	}
	var c Collection
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("decode collection %q: %w", name, err)
	}
	return &c, nil
}

// CreateCollection adds a collection; the name must be new.
func (s *Store) CreateCollection(c Collection) (*Collection, error) {
	if !validCollectionName(c.Name) {
		return nil, fmt.Errorf("%w: name must be 1-64 characters of [A-Za-z0-9._-]", ErrInvalid)
	}
	if len(c.Description) > maxMetadataLen || len(c.DeviceType) > maxFieldLen || len(c.Metadata) > maxMetadataKeys {
		return nil, fmt.Errorf("%w: description, deviceType or metadata too long", ErrInvalid)
	}
	c.CreatedAt = s.now().UTC()
	c.UpdatedAt = c.CreatedAt
	b, _ := json.Marshal(c)
	_, ok, err := storage.CmpAndSwap(s.db, CollectionsTable, []byte(c.Name), nil, b)
	if err != nil {
		return nil, fmt.Errorf("write collection: %w", err)
	}
	if !ok {
		return nil, fmt.Errorf("collection %q already exists: %w", c.Name, ErrConflict)
	}
	return &c, nil
}

// CollectionPatch changes some fields of a collection.
type CollectionPatch struct {
	Description *string            `json:"description,omitempty"`
	DeviceType  *string            `json:"deviceType,omitempty"`
	Metadata    *map[string]string `json:"metadata,omitempty"`
}

// UpdateCollection applies a patch.
func (s *Store) UpdateCollection(name string, p CollectionPatch) (*Collection, error) {
	for range 5 {
		old, err := s.db.Get(CollectionsTable, []byte(name))
		if database.IsErrNotFound(err) {
			return nil, fmt.Errorf("collection %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		var c Collection
		if err := json.Unmarshal(old, &c); err != nil {
			return nil, err
		}
		if p.Description != nil {
			c.Description = *p.Description
		}
		if p.DeviceType != nil {
			c.DeviceType = *p.DeviceType
		}
		if p.Metadata != nil {
			c.Metadata = *p.Metadata
		}
		if len(c.Description) > maxMetadataLen || len(c.DeviceType) > maxFieldLen || len(c.Metadata) > maxMetadataKeys {
			return nil, fmt.Errorf("%w: description, deviceType or metadata too long", ErrInvalid)
		}
		c.UpdatedAt = s.now().UTC()
		b, _ := json.Marshal(c)
		if _, ok, err := s.db.CmpAndSwap(CollectionsTable, []byte(name), old, b); err != nil {
			return nil, err
		} else if ok {
			return &c, nil
		}
	}
	return nil, fmt.Errorf("collection %q is being changed concurrently: %w", name, ErrConflict)
}

// ListCollections returns every collection, by name.
func (s *Store) ListCollections() ([]*Collection, error) {
	entries, err := s.db.List(CollectionsTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("list collections: %w", err)
	}
	out := make([]*Collection, 0, len(entries))
	for _, e := range entries {
		var c Collection
		if err := json.Unmarshal(e.Value, &c); err != nil {
			return nil, fmt.Errorf("decode collection %q: %w", e.Key, err)
		}
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteCollection removes an empty collection.
func (s *Store) DeleteCollection(name string) error {
	if _, err := s.GetCollection(name); err != nil {
		return err
	}
	devs, _, err := s.List(ListOptions{Collection: name, Limit: 1})
	if err != nil {
		return err
	}
	if len(devs) > 0 {
		return fmt.Errorf("collection %q still has devices (e.g. %s): %w", name, devs[0].ID, ErrConflict)
	}
	return s.db.Del(CollectionsTable, []byte(name))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// difference returns the elements of a that are not in b.
func difference(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func removeString(list []string, s string) []string {
	out := list[:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}
