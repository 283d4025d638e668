package store

import (
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// groupCommitter commits concurrent writes together without waiting for a
// timer (bbolt's Batch waits up to MaxBatchDelay even when alone): a write
// that finds no commit running starts one at once; writes that arrive
// while one runs join the next, which starts as soon as it ends. Alone, a
// write pays one fsync; under load, many writes share one.
//
// "Group" as in group commit: this has nothing to do with device groups.
type groupCommitter struct {
	db     *bolt.DB
	before func(op string) error
	max    int

	mu      sync.Mutex
	pending []*pendingWrite
	running bool
}

// pendingWrite is one write waiting for its batch's commit.
type pendingWrite struct {
	op   string
	fn   func(*bolt.Tx) error
	err  error
	done chan struct{}
}

func (gc *groupCommitter) do(op string, fn func(*bolt.Tx) error) error {
	c := &pendingWrite{op: op, fn: fn, done: make(chan struct{})}
	gc.mu.Lock()
	gc.pending = append(gc.pending, c)
	if gc.running {
		gc.mu.Unlock()
		<-c.done
		return c.err
	}
	gc.running = true
	gc.mu.Unlock()
	gc.run()
	<-c.done
	return c.err
}

// run commits batches until none is pending.
func (gc *groupCommitter) run() {
	for {
		gc.mu.Lock()
		batch := gc.pending
		if len(batch) > gc.max {
			batch = batch[:gc.max]
		}
		gc.pending = gc.pending[len(batch):]
		if len(batch) == 0 {
			gc.running = false
			gc.mu.Unlock()
			return
		}
		gc.mu.Unlock()
		gc.commit(batch)
	}
}

// commit runs every write's function in one transaction. A function that
// fails takes its write out and the rest is tried again; a failed commit
// fails them all.
func (gc *groupCommitter) commit(batch []*pendingWrite) {
	for len(batch) > 0 {
		var failed *pendingWrite
		err := gc.db.Update(func(tx *bolt.Tx) error {
			for _, c := range batch {
				if err := c.fn(tx); err != nil {
					c.err, failed = err, c
					return errAbortWrite
				}
			}
			if gc.before != nil {
				if err := gc.before(batch[0].op); err != nil {
					return fmt.Errorf("%w: %w", ErrUnavailable, err)
				}
			}
			return nil
		})
		if failed != nil && errors.Is(err, errAbortWrite) {
			close(failed.done)
			rest := batch[:0:0]
			for _, c := range batch {
				if c != failed {
					rest = append(rest, c)
				}
			}
			batch = rest
			continue
		}
		for _, c := range batch {
			if err != nil {
				c.err = classify(c.op, err, nil)
			}
			close(c.done)
		}
		return
	}
}
