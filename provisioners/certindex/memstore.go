package certindex

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
)

// memStore keeps the records in a key/value table (serial → JSON record)
// and answers queries from an in-memory copy of the filterable fields.
//
// Why in memory: bbolt has no secondary indexes and no substring index;
// emulating them with index buckets costs a write per index per event and
// still cannot search substrings. bbolt is single-process, so the process
// that holds the database file can hold the only query index: it is loaded
// once at start (a scan of the table) and updated under the same lock as
// every write, so it never disagrees with the table. A query walks a sort
// order from the cursor (common names) or scans every entry's trigram
// signature in parallel (rare names); docs/certificates.md has the design
// and bench/certindex the cost at 1,000,000 certificates.
type memStore struct {
	db    nosql.DB
	table []byte

	write sync.Mutex // serialises table write + entry update
	mu    sync.RWMutex
	ents  []entry
	sigs  []signature        // sigs[i] is the trigram signature of ents[i]
	order map[string][]int32 // per sort: positions in ents in ascending (key, serial)
	pos   map[string]int32   // serial → index in ents
	names map[string]string
}

// entry is what a query needs of a record.
type entry struct {
	serial, text, prov, device, endpoint string
	notBefore, notAfter                  int64
	revokedAt                            int64 // Unix seconds; set when revoked
	revoked                              bool
}

func openMem(db nosql.DB) (*memStore, error) {
	s := &memStore{db: db, table: []byte(Table), pos: map[string]int32{}, names: map[string]string{},
		order: map[string][]int32{SortNotAfter: nil, SortIssued: nil}}
	if err := db.CreateTable(s.table); err != nil {
		return nil, fmt.Errorf("create %s: %w", Table, err)
	}
	if err := s.load(); err != nil {
		return nil, fmt.Errorf("load %s: %w", Table, err)
	}
	return s, nil
}

// load fills the query index from the table: the scan hands batches of
// rows to GOMAXPROCS decoders (decoding is most of the cost), and the
// sort orders are built once at the end.
func (s *memStore) load() error {
	type batch struct {
		rows [][]byte
		out  chan []indexed
	}
	work := make(chan batch, runtime.GOMAXPROCS(0))
	ordered := make(chan chan []indexed, 2*runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				out := make([]indexed, 0, len(b.rows))
				for _, v := range b.rows {
					var r Record
					if err := json.Unmarshal(v, &r); err != nil {
						out = append(out, indexed{err: fmt.Errorf("decode %s row: %w", Table, err)})
						break
					}
					out = append(out, newIndexed(&r))
				}
				b.out <- out
			}
		}()
	}
	var loadErr error
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for out := range ordered {
			for _, x := range <-out {
				if x.err != nil && loadErr == nil {
					loadErr = x.err
				}
				if x.err == nil {
					s.put(x)
				}
			}
		}
	}()
	rows := make([][]byte, 0, 1000)
	flush := func() {
		b := batch{rows: rows, out: make(chan []indexed, 1)}
		ordered <- b.out
		work <- b
		rows = make([][]byte, 0, 1000)
	}
	err := storage.ForEach(s.db, s.table, func(_, v []byte) error {
		if rows = append(rows, append([]byte(nil), v...)); len(rows) == cap(rows) {
			flush()
		}
		return nil
	})
	if len(rows) > 0 {
		flush()
	}
	close(work)
	close(ordered)
	wg.Wait()
	<-collected
	if err == nil {
		err = loadErr
	}
	if err != nil {
		return err
	}
	all := make([]int32, len(s.ents))
	for i := range all {
		all[i] = int32(i)
	}
	s.place(all)
	return nil
}

// indexed is a record's in-memory entry, built off the lock.
type indexed struct {
	e   entry
	sig signature
	err error
}

func newIndexed(r *Record) indexed {
	e := entry{serial: r.Serial, text: r.searchText(), prov: r.Provisioner.Name,
		device: r.Device, endpoint: r.Endpoint, revoked: r.Revocation != nil}
	if r.Revocation != nil {
		e.revokedAt = r.Revocation.RevokedAt.Unix()
	}
	if r.HasCertificate() {
		e.notBefore, e.notAfter = r.NotBefore.Unix(), r.NotAfter.Unix()
	}
	return indexed{e: e, sig: trigrams(e.text)}
}

// intern shares the strings many records repeat (provisioner names).
func (s *memStore) intern(v string) string {
	if w, ok := s.names[v]; ok {
		return w
	}
	s.names[v] = v
	return v
}

// put adds or replaces an entry; s.mu must be held for writing (or s not
// yet shared). It returns the position of an entry that must be (re)placed
// in the sort orders (a new one, or a stub whose dates arrived), or -1.
func (s *memStore) put(x indexed) int32 {
	x.e.prov = s.intern(x.e.prov)
	if i, ok := s.pos[x.e.serial]; ok {
		old := s.ents[i]
		moved := old.notBefore != x.e.notBefore || old.notAfter != x.e.notAfter
		if moved {
			s.unorder(i) // found by its old keys
		}
		s.ents[i], s.sigs[i] = x.e, x.sig
		if moved {
			return i
		}
		return -1
	}
	i := int32(len(s.ents))
	s.pos[x.e.serial] = i
	s.ents = append(s.ents, x.e)
	s.sigs = append(s.sigs, x.sig)
	return i
}

// order places entries in every sort order. A few are inserted in place
// (new certificates mostly sort near the end, so the move is short); a
// batch (reindex) is sorted and merged in one pass.
func (s *memStore) place(idx []int32) {
	for by, arr := range s.order {
		o := order{sort: by}
		cmp := func(a, b int32) int { return o.cmp(&s.ents[a], &s.ents[b]) }
		if len(idx) <= 16 {
			for _, i := range idx {
				at, _ := slices.BinarySearchFunc(arr, i, cmp)
				arr = slices.Insert(arr, at, i)
			}
			s.order[by] = arr
			continue
		}
		add := slices.Clone(idx)
		slices.SortFunc(add, cmp)
		merged := make([]int32, 0, len(arr)+len(add))
		for len(arr) > 0 && len(add) > 0 {
			if cmp(add[0], arr[0]) < 0 {
				merged, add = append(merged, add[0]), add[1:]
			} else {
				merged, arr = append(merged, arr[0]), arr[1:]
			}
		}
		merged = append(append(merged, arr...), add...)
		s.order[by] = merged
	}
}

func (s *memStore) unorder(i int32) {
	for by, arr := range s.order {
		o := order{sort: by}
		at, found := slices.BinarySearchFunc(arr, i, func(a, b int32) int { return o.cmp(&s.ents[a], &s.ents[b]) })
		if found && arr[at] == i {
			s.order[by] = slices.Delete(arr, at, at+1)
		}
	}
}

func (s *memStore) Put(recs []*Record) error {
	s.write.Lock()
	defer s.write.Unlock()
	merged := make([]*Record, 0, len(recs))
	tx := &database.Tx{}
	for _, in := range recs {
		cur, err := s.getMerged(in, merged)
		if err != nil {
			return err
		}
		if cur == nil {
			continue // nothing new
		}
		b, err := json.Marshal(cur)
		if err != nil {
			return err
		}
		tx.Set(s.table, []byte(cur.Serial), b)
		merged = append(merged, cur)
	}
	if len(merged) == 0 {
		return nil
	}
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("write %s: %w", Table, err)
	}
	s.mu.Lock()
	var moved []int32
	for _, r := range merged {
		if i := s.put(newIndexed(r)); i >= 0 {
			moved = append(moved, i)
		}
	}
	s.place(moved)
	s.mu.Unlock()
	return nil
}

// getMerged returns the stored record (or one already merged in this
// batch) with in merged into it, or nil if in adds nothing.
func (s *memStore) getMerged(in *Record, batch []*Record) (*Record, error) {
	for _, r := range batch {
		if r.Serial == in.Serial {
			r.merge(in)
			return nil, nil
		}
	}
	cur, err := s.Get(in.Serial)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		c := *in
		return &c, nil
	}
	if !cur.merge(in) {
		return nil, nil
	}
	return cur, nil
}

func (s *memStore) Get(serial string) (*Record, error) {
	b, err := s.db.Get(s.table, []byte(serial))
	if database.IsErrNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s/%s: %w", Table, serial, err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode %s/%s: %w", Table, serial, err)
	}
	return &r, nil
}

// matches is the filter on an entry; it must agree with the SQL of
// sqlstore.go (TestStoresAgree).
func (f *Filter) matches(e *entry, now int64) bool {
	if e.notAfter == 0 {
		return false
	}
	if f.Provisioner != "" && e.prov != f.Provisioner || f.Device != "" && e.device != f.Device ||
		f.Endpoint != "" && e.endpoint != f.Endpoint {
		return false
	}
	if f.notRevoked && e.revoked {
		return false
	}
	switch f.Status {
	case StatusRevoked:
		if !e.revoked {
			return false
		}
	case StatusActive:
		if e.revoked || now >= e.notAfter {
			return false
		}
	case StatusExpired:
		if e.revoked || now < e.notAfter {
			return false
		}
	}
	if f.ExpiresBefore != nil && e.notAfter >= f.ExpiresBefore.Unix() || f.ExpiresAfter != nil && e.notAfter <= f.ExpiresAfter.Unix() {
		return false
	}
	if (f.RevokedSince != nil || f.RevokedBefore != nil) && !e.revoked ||
		f.RevokedSince != nil && e.revokedAt < f.RevokedSince.Unix() || f.RevokedBefore != nil && e.revokedAt >= f.RevokedBefore.Unix() {
		return false
	}
	if len(f.Serials) > 0 && !slices.Contains(f.Serials, e.serial) {
		return false
	}
	return f.Q == "" || strings.Contains(e.text, f.Q)
}

// signature is a 256-bit Bloom filter of the trigrams of a search text.
// A needle can only be in a text whose signature has every bit of the
// needle's signature, so a query skips most entries with four AND
// operations on a dense array instead of a substring search on a string
// elsewhere in memory. A text of 60 bytes sets about a fifth of the bits,
// so a needle of n >= 3 bytes lets through about 0.2^(n-2) of the
// non-matching entries; a needle shorter than 3 bytes has an empty
// signature and every entry is searched.
type signature [4]uint64

func trigrams(s string) signature {
	var sig signature
	for i := 0; i+3 <= len(s); i++ {
		h := (uint32(s[i])*0x9E3779B1 ^ uint32(s[i+1])*0x85EBCA77 ^ uint32(s[i+2])*0xC2B2AE3D) >> 24
		sig[h>>6] |= 1 << (h & 63)
	}
	return sig
}

func (s *signature) has(need *signature) bool {
	return s[0]&need[0] == need[0] && s[1]&need[1] == need[1] && s[2]&need[2] == need[2] && s[3]&need[3] == need[3]
}

// order compares positions in one sort order.
type order struct {
	sort string
	desc bool
}

func (o order) key(e *entry) int64 { return sortKey(o.sort, e.notBefore, e.notAfter) }

// cmp orders two entries ascending (the stored orders).
func (o order) cmp(a, b *entry) int {
	ka, kb := o.key(a), o.key(b)
	switch {
	case ka < kb:
		return -1
	case ka > kb:
		return 1
	}
	return strings.Compare(a.serial, b.serial)
}

// before reports whether (ka, sa) comes before (kb, sb).
func (o order) before(ka int64, sa string, kb int64, sb string) bool {
	less := ka < kb || ka == kb && sa < sb
	if o.desc {
		return ka > kb || ka == kb && sa > sb
	}
	return less
}

// pageHeap keeps the first n entries of an order: a heap whose top is the
// last of them, evicted when a better one comes.
type pageHeap struct {
	o    order
	ents []*entry
}

func (h *pageHeap) Len() int { return len(h.ents) }
func (h *pageHeap) Less(i, j int) bool {
	a, b := h.ents[i], h.ents[j]
	return h.o.before(h.o.key(b), b.serial, h.o.key(a), a.serial)
}
func (h *pageHeap) Swap(i, j int) { h.ents[i], h.ents[j] = h.ents[j], h.ents[i] }
func (h *pageHeap) Push(x any)    { h.ents = append(h.ents, x.(*entry)) }
func (h *pageHeap) Pop() any {
	e := h.ents[len(h.ents)-1]
	h.ents = h.ents[:len(h.ents)-1]
	return e
}

func (h *pageHeap) offer(e *entry, n int) {
	if len(h.ents) < n {
		heap.Push(h, e)
		return
	}
	top := h.ents[0]
	if h.o.before(h.o.key(e), e.serial, h.o.key(top), top.serial) {
		h.ents[0] = e
		heap.Fix(h, 0)
	}
}

// scan calls fn for each matching entry after the cursor, in parallel
// chunks; fn gets its chunk number. s.mu must be held for reading.
func (s *memStore) scan(q *Query, fn func(chunk int, e *entry)) int {
	o := order{q.Sort, q.Desc}
	now := q.Now.Unix()
	need := trigrams(q.Q)
	chunks := max(1, min(runtime.GOMAXPROCS(0), len(s.ents)/50000))
	size := (len(s.ents) + chunks - 1) / chunks
	var wg sync.WaitGroup
	for c := range chunks {
		lo, hi := c*size, min((c+1)*size, len(s.ents))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				if !s.sigs[i].has(&need) {
					continue
				}
				e := &s.ents[i]
				if !q.matches(e, now) {
					continue
				}
				if q.After != nil && !o.before(q.After.Key, q.After.Serial, o.key(e), e.serial) {
					continue
				}
				fn(c, e)
			}
		}()
	}
	wg.Wait()
	return chunks
}

// probeRows is how many entries List walks in sort order before it falls
// back to scanning everything: a name most certificates share fills a
// page within a few entries of the cursor, and a rare one is found faster
// by the parallel scan than by walking the order (random memory access).
var probeRows = 20000 // a variable for tests

func (s *memStore) List(q *Query) ([]*Record, *Cursor, error) {
	o := order{q.Sort, q.Desc}
	n := q.Limit + 1
	s.mu.RLock()
	all, ok := s.probe(q, n)
	if !ok {
		all = s.scanPage(q, n)
	}
	serials := make([]string, len(all))
	for i, e := range all {
		serials[i] = e.serial
	}
	var next *Cursor
	if len(all) > q.Limit {
		last := all[q.Limit-1]
		next = &Cursor{Sort: q.Sort, Desc: q.Desc, Key: o.key(last), Serial: last.serial}
		serials = serials[:q.Limit]
	}
	s.mu.RUnlock()
	recs, err := s.records(serials)
	return recs, next, err
}

// probe walks the sort order from the cursor for at most probeRows
// entries; ok is false when it stopped there without a full page.
func (s *memStore) probe(q *Query, n int) ([]*entry, bool) {
	o := order{q.Sort, q.Desc}
	arr := s.order[q.Sort]
	now := q.Now.Unix()
	need := trigrams(q.Q)
	// i: the first position after the cursor in the walk's direction.
	i, step := 0, 1
	if q.Desc {
		i, step = len(arr)-1, -1
	}
	if c := q.After; c != nil {
		at := sort.Search(len(arr), func(j int) bool {
			e := &s.ents[arr[j]]
			k := o.key(e)
			return k > c.Key || k == c.Key && e.serial > c.Serial
		})
		if i = at; q.Desc {
			// the last position strictly before the cursor
			i = sort.Search(len(arr), func(j int) bool {
				e := &s.ents[arr[j]]
				k := o.key(e)
				return k > c.Key || k == c.Key && e.serial >= c.Serial
			}) - 1
		}
	}
	var out []*entry
	for walked := 0; i >= 0 && i < len(arr); i, walked = i+step, walked+1 {
		if walked == probeRows {
			return nil, false
		}
		if !s.sigs[arr[i]].has(&need) {
			continue
		}
		if e := &s.ents[arr[i]]; q.matches(e, now) {
			if out = append(out, e); len(out) == n {
				break
			}
		}
	}
	return out, true
}

// scanPage scans every entry in parallel and keeps the first n in order.
func (s *memStore) scanPage(q *Query, n int) []*entry {
	o := order{q.Sort, q.Desc}
	heaps := make([]*pageHeap, runtime.GOMAXPROCS(0)+1)
	for i := range heaps {
		heaps[i] = &pageHeap{o: o}
	}
	s.scan(q, func(c int, e *entry) { heaps[c].offer(e, n) })
	var all []*entry
	for _, h := range heaps {
		all = append(all, h.ents...)
	}
	slices.SortFunc(all, func(a, b *entry) int {
		if o.before(o.key(a), a.serial, o.key(b), b.serial) {
			return -1
		}
		return 1
	})
	if len(all) > n {
		all = all[:n]
	}
	return all
}

func (s *memStore) records(serials []string) ([]*Record, error) {
	out := make([]*Record, 0, len(serials))
	for _, sn := range serials {
		r, err := s.Get(sn)
		if err != nil {
			return nil, err
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *memStore) Count(f *Filter, now time.Time) (int, error) {
	counts := make([]int, runtime.GOMAXPROCS(0)+1)
	s.mu.RLock()
	s.scan(&Query{Filter: *f, Sort: SortNotAfter, Now: now}, func(c int, _ *entry) { counts[c]++ })
	s.mu.RUnlock()
	n := 0
	for _, c := range counts {
		n += c
	}
	return n, nil
}

// exportPage is how many rows one read transaction of an export covers.
const exportPage = 1000

// Export walks the table a page at a time (one short read transaction
// each, so a slow client never pins bbolt's pages) and decides each row
// on its in-memory entry, so rows that do not match are never decoded.
// Memory: one page of rows.
func (s *memStore) Export(q *Query, fn func(doc []byte, status string) error) error {
	now := q.Now.Unix()
	need := trigrams(q.Q)
	var docs [][]byte
	var states []string
	var after []byte
	for {
		docs, states = docs[:0], states[:0]
		next, err := storage.ForEachPage(s.db, s.table, after, exportPage, func(k, v []byte) error {
			s.mu.RLock()
			i, ok := s.pos[string(k)]
			match := ok && s.sigs[i].has(&need) && q.matches(&s.ents[i], now)
			var st string
			if match {
				st = status(s.ents[i].revoked, s.ents[i].notAfter, now)
			}
			s.mu.RUnlock()
			if match {
				docs, states = append(docs, append([]byte(nil), v...)), append(states, st)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("read %s: %w", Table, err)
		}
		for j, d := range docs {
			if err := fn(d, states[j]); err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		after = next
	}
}
