package store

import (
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// groupCommit commits concurrent writes together without waiting for a
// timer (bbolt's Batch waits up to MaxBatchDelay even when alone): a write
// that finds no commit running starts one at once; writes that arrive
// while one runs join the next, which starts as soon as it ends. Alone, a
// write pays one fsync; under load, many writes share one.
type groupCommit struct {
	db     *bolt.DB
	before func(op string) error
	max    int

	mu      sync.Mutex
	pending []*call
	running bool
}

type call struct {
	op   string
	fn   func(*bolt.Tx) error
	err  error
	done chan struct{}
}

// errAbortCall marks a call whose own function failed: it leaves the batch
// and the rest is committed without it.
var errAbortCall = errors.New("call failed")

func (g *groupCommit) do(op string, fn func(*bolt.Tx) error) error {
	c := &call{op: op, fn: fn, done: make(chan struct{})}
	g.mu.Lock()
	g.pending = append(g.pending, c)
	if g.running {
		g.mu.Unlock()
		<-c.done
		return c.err
	}
	g.running = true
	g.mu.Unlock()
	g.run()
	<-c.done
	return c.err
}

// run commits batches until none is pending.
func (g *groupCommit) run() {
	for {
		g.mu.Lock()
		batch := g.pending
		if len(batch) > g.max {
			batch = batch[:g.max]
		}
		g.pending = g.pending[len(batch):]
		if len(batch) == 0 {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		g.commit(batch)
	}
}

// commit runs every call's function in one transaction. A function that
// fails takes its call out and the rest is tried again; a failed commit
// fails them all.
func (g *groupCommit) commit(batch []*call) {
	for len(batch) > 0 {
		var failed *call
		err := g.db.Update(func(tx *bolt.Tx) error {
			for _, c := range batch {
				if err := c.fn(tx); err != nil {
					c.err, failed = err, c
					return errAbortCall
				}
			}
			if g.before != nil {
				if err := g.before(batch[0].op); err != nil {
					return fmt.Errorf("%w: %w", ErrUnavailable, err)
				}
			}
			return nil
		})
		if failed != nil && errors.Is(err, errAbortCall) {
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
