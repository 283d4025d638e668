package status

import (
	"net/netip"
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

	stations []Station

	mu     sync.Mutex
	seq    uint64
	head   string
	health *Health
}

// Station names the source addresses of a station on the line, so the
// console says "line 2, station B" rather than an address.
type Station struct {
	Network netip.Prefix
	Name    string
}

// NewConsole follows the batches of plans; stations name sources (the
// first that holds an address names it).
func NewConsole(plans []Plan, stations []Station) *Console {
	return &Console{Line: New(), Batches: NewBatches(plans), Feed: NewFeed(), head: auditlog.Genesis, stations: stations}
}

// SetHealth replaces the health panel's content (the proxy's checks).
func (c *Console) SetHealth(h Health) {
	c.mu.Lock()
	c.health = &h
	c.mu.Unlock()
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

// Attempt is an attempt as the console shows it: the record, its
// station's name, and for one that did not enroll what happened and what
// to do.
type Attempt struct {
	auditlog.Record
	Station string `json:"station,omitempty"`
	What    string `json:"what,omitempty"`
	Do      string `json:"do,omitempty"`
}

// Attempt is r as the console shows it.
func (c *Console) Attempt(r auditlog.Record) Attempt {
	a := Attempt{Record: r, Station: c.station(r.Source)}
	if act := ActionFor(r); act != nil {
		a.What, a.Do = act.What, act.Do
	}
	return a
}

// station is the configured name of source's station, or "".
func (c *Console) station(source string) string {
	addr, err := netip.ParseAddr(source)
	if err != nil {
		return ""
	}
	for _, s := range c.stations {
		if s.Network.Contains(addr.Unmap()) {
			return s.Name
		}
	}
	return ""
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
	// Health is nil until the proxy's first check.
	Health *Health `json:"health"`
}

// State is the console's content now.
func (c *Console) State(now time.Time) State {
	snap := c.Line.Snapshot()
	st := State{Day: snap.Day, Counts: snap.Counts, Recent: []Attempt{}, At: now.UTC()}
	for _, r := range snap.Recent {
		st.Recent = append(st.Recent, c.Attempt(r))
	}
	for _, b := range c.Batches.Stats(now) {
		st.Batches = append(st.Batches, b)
	}
	slices.SortFunc(st.Batches, func(a, b BatchStats) int { return strings.Compare(a.Name, b.Name) })
	c.mu.Lock()
	st.HeadSeq, st.HeadHash, st.Health = c.seq, c.head, c.health
	c.mu.Unlock()
	return st
}
