package status

import (
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/fleetprov/prov/proxy/auditlog"
)

// Plan is what a batch's configuration says of it.
type Plan struct {
	Name      string    `json:"name"`
	Planned   int       `json:"planned"` // boards in its manifest
	Quota     int       `json:"quota"`   // 0: the manifest's size
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
}

// BatchStats are a batch's numbers, exact: every one is a count over the
// factory record, as `prov-proxy audit list` shows it.
type BatchStats struct {
	Plan
	Attempts int `json:"attempts"`
	// Enrolled counts boards (hardware IDs) enrolled at least once.
	Enrolled int `json:"enrolled"`
	// RefusedBy counts refused attempts by rule; Failed counts attempts
	// that failed upstream.
	RefusedBy map[string]int `json:"refusedBy"`
	Failed    int            `json:"failed"`
	// Retrying are boards with an attempt that did not enroll, and none
	// since that did.
	Retrying int `json:"retrying"`
	// Remaining = Planned - Enrolled.
	Remaining int `json:"remaining"`
	// FirstPassYield is the share of boards attempted whose first attempt
	// enrolled (0 to 1).
	FirstPassYield float64 `json:"firstPassYield"`
	// PerHour is boards enrolled in the last hour; ETA the time to enrol
	// the remaining ones at that rate (zero when unknown).
	PerHour int           `json:"perHour"`
	ETA     time.Duration `json:"etaNs"`
}

type board struct {
	enrolled bool
	pending  bool // the last attempt did not enroll
}

// batchState keeps every count Stats gives as it goes, so that Stats
// (each console's GET /console/state) holds the lock that Observe, on the
// enrollment path, waits for only for a moment, not for a walk over every
// board of the batch.
type batchState struct {
	attempts  int
	refusedBy map[string]int
	failed    int
	boards    map[string]*board // by board/hardware ID
	enrolled  []time.Time       // enrollment times, in order: one per board
	firstOK   int               // boards whose first attempt enrolled
	retrying  int               // boards pending
}

// Batches follows the factory record per batch.
type Batches struct {
	mu    sync.Mutex
	plans map[string]Plan
	state map[string]*batchState
}

// NewBatches follows the batches of plans.
func NewBatches(plans []Plan) *Batches {
	b := &Batches{plans: map[string]Plan{}, state: map[string]*batchState{}}
	for _, p := range plans {
		b.plans[p.Name] = p
	}
	return b
}

// Observe takes one record of the factory record, in order; a record of
// no batch (a refusal before the board was matched to one) is left out.
func (b *Batches) Observe(r auditlog.Record) {
	if r.Batch == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.state[r.Batch]
	if st == nil {
		st = &batchState{refusedBy: map[string]int{}, boards: map[string]*board{}}
		b.state[r.Batch] = st
	}
	st.attempts++
	key := r.Board + "/" + r.HardwareID
	bd := st.boards[key]
	first := bd == nil
	if first {
		bd = &board{}
		st.boards[key] = bd
	}
	wasPending := bd.pending
	switch r.Result {
	case auditlog.Enrolled:
		if first {
			st.firstOK++
		}
		if !bd.enrolled {
			st.enrolled = append(st.enrolled, r.Time)
		}
		bd.enrolled, bd.pending = true, false
	case auditlog.Refused:
		st.refusedBy[r.Rule]++
		bd.pending = !bd.enrolled
	default:
		st.failed++
		bd.pending = !bd.enrolled
	}
	switch {
	case bd.pending && !wasPending:
		st.retrying++
	case !bd.pending && wasPending:
		st.retrying--
	}
}

// Stats are every batch's numbers at now, by name; a configured batch
// without attempts is there with zeros.
func (b *Batches) Stats(now time.Time) map[string]BatchStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]BatchStats{}
	names := maps.Clone(b.plans)
	for name := range b.state {
		if _, ok := names[name]; !ok {
			names[name] = Plan{Name: name}
		}
	}
	for name, plan := range names {
		s := BatchStats{Plan: plan, RefusedBy: map[string]int{}}
		if st := b.state[name]; st != nil {
			s.Attempts, s.Failed = st.attempts, st.failed
			maps.Copy(s.RefusedBy, st.refusedBy)
			s.Enrolled, s.Retrying = len(st.enrolled), st.retrying
			if len(st.boards) > 0 {
				s.FirstPassYield = float64(st.firstOK) / float64(len(st.boards))
			}
			// The enrollments of the last hour are the tail of the
			// times, which are in order.
			s.PerHour = len(st.enrolled) - sort.Search(len(st.enrolled), func(i int) bool { return now.Sub(st.enrolled[i]) <= time.Hour })
		}
		s.Remaining = max(plan.Planned-s.Enrolled, 0)
		if s.PerHour > 0 && s.Remaining > 0 {
			s.ETA = time.Duration(float64(s.Remaining) / float64(s.PerHour) * float64(time.Hour))
		}
		out[name] = s
	}
	return out
}
