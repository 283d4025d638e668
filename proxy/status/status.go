// Package status is what the factory line's status page shows: today's
// counts of attempts by result and the last attempts, fed by the factory
// record (the file's records at start, then every record as it is
// written). It holds no state of its own that the record does not.
package status

import (
	"maps"
	"sync"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
)

// MaxRecent is how many attempts the page shows.
const MaxRecent = 50

// Line follows the factory record.
type Line struct {
	mu     sync.Mutex
	recent []auditlog.Record // newest last
	counts map[string]int    // today's, by result
	day    string
}

// New makes an empty line.
func New() *Line { return &Line{counts: map[string]int{}} }

// Observe takes one record of the factory record, in order.
func (l *Line) Observe(r auditlog.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	day := r.Time.Local().Format(time.DateOnly)
	if day != l.day {
		if day < l.day {
			return // older than today's counts
		}
		l.day, l.counts = day, map[string]int{}
	}
	l.counts[r.Result]++
	l.recent = append(l.recent, r)
	if len(l.recent) > MaxRecent {
		l.recent = l.recent[len(l.recent)-MaxRecent:]
	}
}

// Snapshot is the page's content at one moment.
type Snapshot struct {
	Day    string
	Counts map[string]int
	Recent []auditlog.Record // newest first
}

// Snapshot returns today's counts and the last attempts.
func (l *Line) Snapshot() Snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Snapshot{Day: l.day, Counts: maps.Clone(l.counts)}
	for i := len(l.recent) - 1; i >= 0; i-- {
		s.Recent = append(s.Recent, l.recent[i])
	}
	return s
}
