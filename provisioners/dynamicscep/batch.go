package dynamicscep

import (
	"errors"
	"fmt"
	"sync"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/stepfort/stepfort/internal/storage"
)

// maxCreateBatch bounds the challenges one group commit writes (two
// entries each), so a burst makes several moderate transactions rather
// than one that holds the bbolt writer (or PostgreSQL row locks) for long.
const maxCreateBatch = 256

// createBatcher is a group commit for new challenges. bbolt fsyncs every
// write transaction, so one transaction per challenge makes concurrent
// creations queue on the disk; instead, creations that arrive while a
// commit is in flight are written together in the next one.
//
// There is no background goroutine. The caller that opens a batch is its
// leader: it waits for the previous commit (commitMu), seals the batch,
// commits it with one storage.Update and wakes the followers that joined
// meanwhile. Each caller then reads its own entries' Swapped flags; an
// error reaches every caller of the batch. A caller returns only after the
// commit holding its rows has ended, so a returned challenge is stored.
type createBatcher struct {
	db nosql.DB

	// commitMu is held by the leader whose batch is being committed.
	commitMu sync.Mutex

	mu      sync.Mutex   // guards pending
	pending *createBatch // open to new challenges; nil when none is
}

// createBatch is one group of challenges committed together.
type createBatch struct {
	ops   []*database.TxEntry // two per challenge
	count int                 // challenges in ops
	done  chan struct{}       // closed when the commit has ended
	err   error               // set before done is closed
}

// errBatchAborted is what followers get if their leader's commit panicked.
var errBatchAborted = errors.New("challenge batch commit aborted")

// store writes row and idx (compare-and-swap entries) in a group commit
// and returns once it has ended; row.Swapped and idx.Swapped are then set.
func (b *createBatcher) store(row, idx *database.TxEntry) error {
	batch, leader := b.join(row, idx)
	if leader {
		b.commit(batch)
	} else {
		<-batch.done
	}
	return batch.err
}

// join adds the entries to the open batch, opening one (and leading it)
// if none is open or the open one is full.
func (b *createBatcher) join(row, idx *database.TxEntry) (*createBatch, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	leader := false
	if b.pending == nil || b.pending.count >= maxCreateBatch {
		b.pending = &createBatch{done: make(chan struct{})}
		leader = true
	}
	batch := b.pending
	batch.ops = append(batch.ops, row, idx)
	batch.count++
	return batch, leader
}

// commit waits for the previous commit, seals batch so nobody joins it
// any more, writes it in one transaction and wakes its followers.
func (b *createBatcher) commit(batch *createBatch) {
	b.commitMu.Lock()
	defer b.commitMu.Unlock()
	b.mu.Lock()
	if b.pending == batch {
		b.pending = nil
	}
	b.mu.Unlock()

	// Followers must wake even if the commit panics.
	batch.err = errBatchAborted
	defer close(batch.done)
	if err := storage.Update(b.db, &database.Tx{Operations: batch.ops}); err != nil {
		batch.err = fmt.Errorf("store %d challenges: %w", batch.count, err)
		return
	}
	batch.err = nil
}
