package main

import (
	"bytes"
	"sort"
	"sync"

	"github.com/smallstep/nosql/database"
)

// memDB is an in-memory nosql database with the same compare-and-swap
// semantics as the bbolt and PostgreSQL drivers. The bench generates its
// 100,000 Endpoints into it through the plugin's own Store (the code path
// the daemon runs), then copies the tables into bbolt in bulk, because
// recording them one fsync at a time on bbolt would take most of an hour.
type memDB struct {
	mu     sync.Mutex
	tables map[string]map[string][]byte
}

func newMemDB() *memDB { return &memDB{tables: map[string]map[string][]byte{}} }

func (m *memDB) Open(string, ...database.Option) error { return nil }
func (m *memDB) Close() error                          { return nil }

func (m *memDB) table(b []byte) (map[string][]byte, error) {
	t, ok := m.tables[string(b)]
	if !ok {
		return nil, database.ErrNotFound
	}
	return t, nil
}

func (m *memDB) Get(b, k []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, err := m.table(b)
	if err != nil {
		return nil, err
	}
	v, ok := t[string(k)]
	if !ok {
		return nil, database.ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (m *memDB) Set(b, k, v []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, err := m.table(b)
	if err != nil {
		return err
	}
	t[string(k)] = bytes.Clone(v)
	return nil
}

func (m *memDB) CmpAndSwap(b, k, old, nw []byte) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, err := m.table(b)
	if err != nil {
		return nil, false, err
	}
	cur := t[string(k)]
	if !bytes.Equal(cur, old) {
		return bytes.Clone(cur), false, nil
	}
	t[string(k)] = bytes.Clone(nw)
	return nw, true, nil
}

func (m *memDB) Del(b, k []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, err := m.table(b)
	if err != nil {
		return err
	}
	delete(t, string(k))
	return nil
}

func (m *memDB) List(b []byte) ([]*database.Entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, err := m.table(b)
	if err != nil {
		return nil, err
	}
	out := make([]*database.Entry, 0, len(t))
	for k, v := range t {
		out = append(out, &database.Entry{Bucket: b, Key: []byte(k), Value: bytes.Clone(v)})
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out, nil
}

// Update applies the operations under one lock, like one bbolt write
// transaction; a compare-and-swap that does not swap does not roll back the
// rest, as in the bbolt and PostgreSQL drivers.
func (m *memDB) Update(tx *database.Tx) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, q := range tx.Operations {
		switch q.Cmd {
		case database.CreateTable:
			if _, ok := m.tables[string(q.Bucket)]; !ok {
				m.tables[string(q.Bucket)] = map[string][]byte{}
			}
			continue
		case database.DeleteTable:
			delete(m.tables, string(q.Bucket))
			continue
		}
		t, err := m.table(q.Bucket)
		if err != nil {
			return err
		}
		switch q.Cmd {
		case database.Get:
			v, ok := t[string(q.Key)]
			if !ok {
				return database.ErrNotFound
			}
			q.Result = bytes.Clone(v)
		case database.Set:
			t[string(q.Key)] = bytes.Clone(q.Value)
		case database.Delete:
			delete(t, string(q.Key))
		case database.CmpAndSwap:
			cur := t[string(q.Key)]
			if !bytes.Equal(cur, q.CmpValue) {
				q.Result, q.Swapped = bytes.Clone(cur), false
				continue
			}
			t[string(q.Key)] = bytes.Clone(q.Value)
			q.Result, q.Swapped = q.Value, true
		default:
			return database.ErrOpNotSupported
		}
	}
	return nil
}

func (m *memDB) CreateTable(b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.tables[string(b)]; !ok {
		m.tables[string(b)] = map[string][]byte{}
	}
	return nil
}

func (m *memDB) DeleteTable(b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.tables, string(b))
	return nil
}

// copyTo writes every table into dst in transactions of up to batch rows.
func (m *memDB) copyTo(dst database.DB, batch int) error {
	for name, t := range m.tables {
		if err := dst.CreateTable([]byte(name)); err != nil {
			return err
		}
		tx := &database.Tx{}
		for k, v := range t {
			tx.Set([]byte(name), []byte(k), v)
			if len(tx.Operations) >= batch {
				if err := dst.Update(tx); err != nil {
					return err
				}
				tx = &database.Tx{}
			}
		}
		if len(tx.Operations) > 0 {
			if err := dst.Update(tx); err != nil {
				return err
			}
		}
	}
	return nil
}
