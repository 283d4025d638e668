package status

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
)

// Console is what the factory console shows, fed by the factory record:
// today's counts and last attempts (Line), each batch's numbers
// (Batches), the record's head, and the feed of new attempts (Feed).
type Console struct {
	Line    *Line
	Batches *Batches
	Feed    *Feed

	mu   sync.Mutex
	seq  uint64
	head string
}

// NewConsole follows the batches of plans.
func NewConsole(plans []Plan) *Console {
	return &Console{Line: New(), Batches: NewBatches(plans), Feed: NewFeed(), head: auditlog.Genesis}
}

// Observe takes one record of the factory record, in order: at start, the
// file's records; then each as it is written (on the enrollment path: it
// never waits).
func (c *Console) Observe(r auditlog.Record) {
	c.mu.Lock()
	c.seq, c.head = r.Seq, r.Hash
	c.mu.Unlock()
	c.Line.Observe(r)
	c.Batches.Observe(r)
	c.Feed.Observe(r)
}

// Snapshot is the status page's content (server.Line).
func (c *Console) Snapshot() Snapshot { return c.Line.Snapshot() }

// Attempt is an attempt as the console shows it: the record, and for one
// that did not enroll what happened and what to do.
type Attempt struct {
	auditlog.Record
	What string `json:"what,omitempty"`
	Do   string `json:"do,omitempty"`
}

// AttemptOf is r with its action.
func AttemptOf(r auditlog.Record) Attempt {
	a := Attempt{Record: r}
	if act := ActionFor(r); act != nil {
		a.What, a.Do = act.What, act.Do
	}
	return a
}

// State is the console's whole content at one moment (GET
// /console/state); the feed then carries each new attempt.
type State struct {
	Day     string         `json:"day"`
	Counts  map[string]int `json:"counts"`
	Recent  []Attempt      `json:"recent"` // newest first
	Batches []BatchStats   `json:"batches"`
	// HeadSeq and HeadHash are the factory record's last record: the
	// chain verified at start up to it (an operator notes it elsewhere).
	HeadSeq  uint64    `json:"headSeq"`
	HeadHash string    `json:"headHash"`
	At       time.Time `json:"at"`
}

// State is the console's content now.
func (c *Console) State(now time.Time) State {
	snap := c.Line.Snapshot()
	st := State{Day: snap.Day, Counts: snap.Counts, Recent: []Attempt{}, At: now.UTC()}
	for _, r := range snap.Recent {
		st.Recent = append(st.Recent, AttemptOf(r))
	}
	for _, b := range c.Batches.Stats(now) {
		st.Batches = append(st.Batches, b)
	}
	slices.SortFunc(st.Batches, func(a, b BatchStats) int { return strings.Compare(a.Name, b.Name) })
	c.mu.Lock()
	st.HeadSeq, st.HeadHash = c.seq, c.head
	c.mu.Unlock()
	return st
}
