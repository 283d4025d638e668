package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Audit retention. Every renewal of a device's certificate (24 h
// certificates renewed at 2/3 of their life: 1.5 a day) writes a
// "certificate seen" event, so a trail that is never pruned grows by
// ~200 bytes per device per day for as long as the fleet runs. Pruning
// to a date removes events before it, with two promises:
//
//   - A subject's state stays knowable: of its events before the date,
//     the newest of each action stays (its register or create event, its
//     last data change, revoke, certificate issued and seen, ...), and
//     every event from the date on stays. Nothing else is removed: the
//     device and group records are not touched.
//   - The trail says what was removed: a subject that loses events gets
//     one summary event (ActionPruned) in their place, at the sequence
//     number of the oldest one removed and the time of the newest: how
//     many, how many of each action, from when to when, by whom, when and
//     to which date. A later prune folds the earlier summary into its own,
//     so a subject has at most one, whose counts add up everything ever
//     removed from it.
//
// Pruning is idempotent: pruning to the same date again finds nothing to
// remove. It runs in small transactions (PruneBatch events each) beside
// the traffic, and one prune at a time per store (ErrPruneRunning).

// ActionPruned is the action of the summary event a prune leaves.
const ActionPruned = "pruned"

// Keys of a summary event's Detail; with "action <name>": its count.
const (
	PrunedEvents = "events"   // how many events it stands for
	PrunedFrom   = "from"     // the oldest one's time (RFC 3339)
	PrunedTo     = "to"       // the newest one's time
	PrunedBefore = "before"   // the date the last prune pruned to
	PrunedAt     = "prunedAt" // when the last prune ran
	prunedAction = "action "
)

// PruneBatch bounds the events one transaction of a prune removes (a
// subject's are removed in one, however many they are).
const PruneBatch = 2000

// pruneScan bounds the subjects one read of a prune reads, per event of
// PruneBatch: a read of a trail with little to remove ends too.
const pruneScan = 5

// PruneResult is what a prune did.
type PruneResult struct {
	// Subjects is how many devices and groups lost events; each has one
	// summary event for them.
	Subjects int `json:"subjects"`
	// Events is how many events were removed, not counting earlier
	// summaries folded into new ones.
	Events int `json:"events"`
	// Actions counts the removed events by action.
	Actions map[string]int `json:"actions,omitempty"`
}

// Add counts what plan p removed.
func (r *PruneResult) Add(p *PrunePlan) {
	r.Subjects++
	r.Events += p.Events
	if r.Actions == nil {
		r.Actions = map[string]int{}
	}
	for a, n := range p.Actions {
		r.Actions[a] += n
	}
}

// PrunePlan is what pruning does to one subject: remove the events at
// Seqs and write Summary (its Seq the key's, its Subject the trail's).
// Every engine prunes by it.
type PrunePlan struct {
	Seqs    []uint64
	Summary Event
	Events  int            // events removed this time (not summaries)
	Actions map[string]int // of them, by action
}

// PlanPrune decides what pruning one subject's events before `before`
// does (nil: nothing). old are its events before that date, in sequence
// order, with Seq and Subject set.
func PlanPrune(old []Event, before, now time.Time, actor string) (*PrunePlan, error) {
	newest := map[string]uint64{}
	for _, e := range old {
		if e.Action != ActionPruned {
			newest[e.Action] = max(newest[e.Action], e.Seq)
		}
	}
	p := &PrunePlan{Actions: map[string]int{}}
	total := map[string]int{}
	var from, to time.Time
	span := func(f, t time.Time) {
		if from.IsZero() || f.Before(from) {
			from = f
		}
		if t.After(to) {
			to = t
		}
	}
	var summaries []Event
	for _, e := range old {
		switch {
		case e.Action == ActionPruned:
			summaries = append(summaries, e)
		case newest[e.Action] != e.Seq:
			p.Seqs = append(p.Seqs, e.Seq)
			p.Events++
			p.Actions[e.Action]++
			total[e.Action]++
			span(e.At, e.At)
		}
	}
	if p.Events == 0 {
		return nil, nil
	}
	// Earlier summaries are folded in: their counts carry over.
	for _, s := range summaries {
		counts, f, t, err := summaryCounts(s)
		if err != nil {
			return nil, err
		}
		for a, n := range counts {
			total[a] += n
		}
		span(f, t)
		p.Seqs = append(p.Seqs, s.Seq)
	}
	slices.Sort(p.Seqs)
	n := 0
	detail := map[string]string{
		PrunedFrom: from.UTC().Format(time.RFC3339), PrunedTo: to.UTC().Format(time.RFC3339),
		PrunedBefore: before.UTC().Format(time.RFC3339), PrunedAt: now.UTC().Format(time.RFC3339),
	}
	for a, c := range total {
		detail[prunedAction+a] = strconv.Itoa(c)
		n += c
	}
	detail[PrunedEvents] = strconv.Itoa(n)
	// Where the removed events were, dated by the newest: the trail stays
	// in sequence order and in time order, and a later prune finds the
	// summary among the events before its date.
	p.Summary = Event{Seq: p.Seqs[0], Subject: old[0].Subject, At: to, Actor: actor, Action: ActionPruned, Detail: detail}
	return p, nil
}

// summaryCounts reads a summary event's counts by action and its span.
func summaryCounts(e Event) (map[string]int, time.Time, time.Time, error) {
	bad := func(what string) error {
		return fmt.Errorf("%w: audit summary %d of %s: bad %s", ErrUnavailable, e.Seq, e.Subject, what)
	}
	counts := map[string]int{}
	for k, v := range e.Detail {
		a, ok := strings.CutPrefix(k, prunedAction)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, time.Time{}, time.Time{}, bad(k)
		}
		counts[a] = n
	}
	from, err1 := time.Parse(time.RFC3339, e.Detail[PrunedFrom])
	to, err2 := time.Parse(time.RFC3339, e.Detail[PrunedTo])
	if err1 != nil || err2 != nil {
		return nil, time.Time{}, time.Time{}, bad("time span")
	}
	return counts, from, to, nil
}

// CheckPruneDate refuses a date to prune to that is not in the past: a
// prune never removes what happened after now.
func CheckPruneDate(before, now time.Time) error {
	if before.IsZero() {
		return fmt.Errorf("%w: no date given", ErrPruneDate)
	}
	if before.After(now) {
		return fmt.Errorf("%w: %s is in the future (now %s)", ErrPruneDate, before.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// PruneAudit removes, from every subject's trail, the events before
// `before` that are not the newest of their action there, and leaves a
// summary of them (see the top of this file). It works through the trail
// in read transactions and removes in write transactions of up to
// PruneBatch events, so devices are served meanwhile; ctx stops it
// between two. bbolt reuses the pages it frees, so the file stops
// growing; it does not shrink (a backup, or `bbolt compact`, writes a
// compact copy).
func (s *Bolt) PruneAudit(ctx context.Context, before time.Time, actor string) (PruneResult, error) {
	var res PruneResult
	now := s.stamp()
	if err := CheckPruneDate(before, now); err != nil {
		return res, err
	}
	if !s.pruning.TryLock() {
		return res, ErrPruneRunning
	}
	defer s.pruning.Unlock()
	var from []byte // the first key not read yet
	for {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("audit prune: %w", err)
		}
		plans, next, err := s.planPrunes(from, before, now, actor)
		if err != nil {
			return res, err
		}
		if len(plans) > 0 {
			if err := s.update("audit prune", func(tx *bolt.Tx) error { return applyPrunes(tx, plans) }); err != nil {
				return res, err
			}
			for _, p := range plans {
				res.Add(p)
			}
		}
		if next == nil {
			return res, nil
		}
		from = next
	}
}

// planPrunes reads subjects from key from on, in one read transaction,
// until their plans remove PruneBatch events; next is the first key of
// the subject after them (nil at the end).
func (s *Bolt) planPrunes(from []byte, before, now time.Time, actor string) (plans []*PrunePlan, next []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		events, subjects := 0, 0
		k, raw := c.First()
		if from != nil {
			k, raw = c.Seek(from)
		}
		for ; k != nil; subjects++ {
			// A long read transaction keeps the pages writers free from
			// being reused: it reads a bounded number of subjects too.
			if events >= s.pruneMax || subjects >= pruneScan*s.pruneMax {
				next = bytes.Clone(k)
				return nil
			}
			if len(k) < 9 || k[len(k)-9] != 0 {
				return fmt.Errorf("%w: audit key % x is not subject 0x00 seq", ErrUnavailable, k)
			}
			prefix := k[:len(k)-8]
			subject := string(k[:len(k)-9])
			var old []Event
			// Within a subject sequence order is time order (events are
			// stamped just before their write), so the first event from
			// `before` on ends its old ones; the rest are skipped unread.
			for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, raw = c.Next() {
				var e Event
				seq := binary.BigEndian.Uint64(k[len(prefix):])
				if err := decode(raw, &e); err != nil {
					return fmt.Errorf("%w: audit record %d of %s is corrupt: %w", ErrUnavailable, seq, subject, err)
				}
				if !e.At.Before(before) {
					k, raw = c.Seek(append(bytes.Clone(prefix[:len(prefix)-1]), 1))
					break
				}
				e.Seq, e.Subject = seq, subject
				old = append(old, e)
			}
			p, err := PlanPrune(old, before, now, actor)
			if err != nil {
				return err
			}
			if p != nil {
				plans = append(plans, p)
				events += len(p.Seqs)
			}
		}
		return nil
	})
	return plans, next, err
}

// applyPrunes removes what plans remove and writes their summaries. Only
// a prune removes or rewrites audit events, and one runs at a time, so
// what the read transaction planned still holds: writers meanwhile only
// appended newer events.
func applyPrunes(tx *bolt.Tx, plans []*PrunePlan) error {
	b := tx.Bucket(bucketAudit)
	for _, p := range plans {
		for _, seq := range p.Seqs {
			if err := b.Delete(auditKey(p.Summary.Subject, seq)); err != nil {
				return err
			}
		}
		raw, err := encodeEvent(p.Summary)
		if err != nil {
			return err
		}
		if err := b.Put(auditKey(p.Summary.Subject, p.Summary.Seq), raw); err != nil {
			return err
		}
	}
	return nil
}
