package store_test

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
)

// at sets the clock (admission_test.go's) to t.
func (c *clock) at(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

const admin = "spiffe://fleet.test/admin/a"

var day0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func day(n int) time.Time { return day0.Add(time.Duration(n) * 24 * time.Hour) }

// registerN registers n devices.
func registerN(t *testing.T, s store.Store, n int) []string {
	t.Helper()
	var serials []string
	for i := range n {
		v, _, err := s.Register(reg(t, fmt.Sprintf("10000000abcde%03x", i)))
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, v.Serial)
	}
	return serials
}

// history gives devices a year-like life in days: registered on day 0,
// a new certificate seen every day, their data changed on day 3 and
// reprovisioned on day 6; the group's data changes every other day.
func history(t *testing.T, s store.Store, c *clock, serials []string, days int) {
	t.Helper()
	for d := range days {
		c.at(day(d).Add(time.Hour))
		for _, serial := range serials {
			if err := s.SeenCertificate(serial, store.Certificate{Fingerprint: fmt.Sprintf("%s-%d", serial, d), Serial: strconv.Itoa(d)}); err != nil {
				t.Fatal(err)
			}
			switch d {
			case 3:
				v, err := s.Device(serial)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.SetDeviceData(serial, v.Generation(), store.Change{Set: map[string]string{"/etc/prov/data/x": "1"}}, admin, func(*store.View) error { return nil }); err != nil {
					t.Fatal(err)
				}
			case 6:
				if _, err := s.Reprovision(serial, admin); err != nil {
					t.Fatal(err)
				}
			}
		}
		if d%2 == 1 {
			g, err := s.Group("default")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetGroupData("default", g.Version, store.Change{Set: map[string]string{"/etc/prov/data/g": strconv.Itoa(d)}}, admin, func(*store.Group) error { return nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func trail(t *testing.T, s store.Store, subject string) []store.Event {
	t.Helper()
	ev, err := s.Audit(subject, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// expectPrune is what pruning a trail to before must leave: every event
// from before on, and of those before it the newest of each action, with
// one summary for the rest (counts of an earlier summary carried over).
func expectPrune(t *testing.T, was []store.Event, before time.Time) (kept []store.Event, removed map[string]int) {
	t.Helper()
	newest := map[string]uint64{}
	for _, e := range was {
		if e.At.Before(before) && e.Action != store.ActionPruned {
			newest[e.Action] = e.Seq
		}
	}
	removed = map[string]int{}
	for _, e := range was {
		switch {
		case !e.At.Before(before) || newest[e.Action] == e.Seq:
			kept = append(kept, e)
		case e.Action == store.ActionPruned:
			for a, n := range e.Detail {
				if name, ok := cutAction(a); ok {
					c, _ := strconv.Atoi(n)
					removed[name] += c
				}
			}
		default:
			removed[e.Action]++
		}
	}
	return kept, removed
}

func cutAction(k string) (string, bool) {
	const p = "action "
	if len(k) > len(p) && k[:len(p)] == p {
		return k[len(p):], true
	}
	return "", false
}

// checkPruned checks a trail after a prune against the one before.
func checkPruned(t *testing.T, subject string, was, got []store.Event, before, prunedAt time.Time) {
	t.Helper()
	kept, removed := expectPrune(t, was, before)
	var summaries []store.Event
	var rest []store.Event
	for _, e := range got {
		if e.Action == store.ActionPruned && e.Detail[store.PrunedAt] == prunedAt.Format(time.RFC3339) {
			summaries = append(summaries, e)
			continue
		}
		rest = append(rest, e)
	}
	if !reflect.DeepEqual(rest, kept) {
		t.Fatalf("%s: kept\n%v\nwant\n%v", subject, rest, kept)
	}
	if len(summaries) != 1 {
		t.Fatalf("%s: %d summaries of this prune, want 1:\n%v", subject, len(summaries), got)
	}
	sum := summaries[0]
	total := 0
	for a, n := range removed {
		total += n
		if sum.Detail["action "+a] != strconv.Itoa(n) {
			t.Errorf("%s: summary says %q of %s, want %d: %v", subject, sum.Detail["action "+a], a, n, sum.Detail)
		}
	}
	if sum.Detail[store.PrunedEvents] != strconv.Itoa(total) || sum.Actor != admin || !sum.At.Before(before) ||
		sum.Detail[store.PrunedBefore] != before.Format(time.RFC3339) {
		t.Errorf("%s: summary %+v, want %d events by %s before %s", subject, sum, total, admin, before)
	}
	// The summary sits where the oldest removed event was: the trail stays
	// in sequence and time order.
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Errorf("%s: trail out of sequence order at %d: %v", subject, i, got)
		}
	}
}

// TestPruneAudit: pruning keeps every event from its date on and the
// newest of each action before it, leaves one summary per subject with
// the right counts, does not touch the records, is idempotent, folds an
// earlier summary into a later prune's, and works in small batches.
func TestPruneAudit(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		c := &clock{now: day0}
		// Batches of 3 events: every subject's prune is a transaction of
		// its own, and reads page through the subjects.
		s := e.open(t, store.Options{Now: c.Now, PruneBatch: 3})
		serials := registerN(t, s, 5)
		history(t, s, c, serials, 12)
		subjects := []string{"group/default"}
		for _, serial := range serials {
			subjects = append(subjects, "device/"+serial)
		}
		records := map[string]*store.View{}
		for _, serial := range serials {
			v, err := s.Device(serial)
			if err != nil {
				t.Fatal(err)
			}
			records[serial] = v
		}

		for _, before := range []time.Time{day(5), day(9)} {
			was := map[string][]store.Event{}
			want := store.PruneResult{Actions: map[string]int{}}
			for _, sub := range subjects {
				was[sub] = trail(t, s, sub)
				_, removed := expectPrune(t, was[sub], before)
				// A later prune reports what it removed itself.
				for _, ev := range was[sub] {
					if ev.Action == store.ActionPruned {
						for a, n := range ev.Detail {
							if name, ok := cutAction(a); ok {
								k, _ := strconv.Atoi(n)
								removed[name] -= k
							}
						}
					}
				}
				want.Subjects++
				for a, n := range removed {
					want.Actions[a] += n
					want.Events += n
				}
			}
			c.Add(time.Minute)
			res, err := s.PruneAudit(t.Context(), before, admin)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(res, want) {
				t.Errorf("prune to %s: %+v, want %+v", before, res, want)
			}
			for _, sub := range subjects {
				checkPruned(t, sub, was[sub], trail(t, s, sub), before, c.Now())
			}
			// Idempotent: the same date again removes nothing.
			again := map[string][]store.Event{}
			for _, sub := range subjects {
				again[sub] = trail(t, s, sub)
			}
			if res, err := s.PruneAudit(t.Context(), before, admin); err != nil || res.Events != 0 || res.Subjects != 0 {
				t.Fatalf("second prune to %s: %+v %v", before, res, err)
			}
			for _, sub := range subjects {
				if got := trail(t, s, sub); !reflect.DeepEqual(got, again[sub]) {
					t.Fatalf("%s changed by a second prune:\n%v\nwas\n%v", sub, got, again[sub])
				}
			}
		}
		// Register, the last data change and reprovision, the newest
		// certificate seen before the date: the device's state stays known.
		for _, serial := range serials {
			actions := map[string]int{}
			for _, ev := range trail(t, s, "device/"+serial) {
				actions[ev.Action]++
			}
			if actions["register"] != 1 || actions["set data"] != 1 || actions["reprovision"] != 1 || actions[store.ActionPruned] != 1 {
				t.Errorf("device %s after two prunes: %v", serial, actions)
			}
			v, err := s.Device(serial)
			if err != nil || !reflect.DeepEqual(v, records[serial]) {
				t.Errorf("device %s's record changed by pruning: %+v, was %+v (%v)", serial, v, records[serial], err)
			}
		}
	})
}

// TestPruneAuditRefusesBadDates: a date in the future, or none, is
// refused, and nothing changes.
func TestPruneAuditRefusesBadDates(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		c := &clock{now: day(10)}
		s := e.open(t, store.Options{Now: c.Now})
		was := trail(t, s, "group/default")
		for _, before := range []time.Time{day(11), {}} {
			if _, err := s.PruneAudit(t.Context(), before, admin); !errors.Is(err, store.ErrPruneDate) {
				t.Errorf("prune to %s: %v, want ErrPruneDate", before, err)
			}
		}
		if got := trail(t, s, "group/default"); !reflect.DeepEqual(got, was) {
			t.Errorf("trail changed: %v", got)
		}
	})
}

// TestConcurrentPrunes: prunes started at once (on PostgreSQL by several
// cores of one database) run one at a time: the others are told
// ErrPruneRunning or find nothing left, and each subject ends with one
// summary whose counts add up to what was there.
func TestConcurrentPrunes(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		c := &clock{now: day0}
		s := e.open(t, store.Options{Now: c.Now, PruneBatch: 2})
		serials := registerN(t, s, 4)
		history(t, s, c, serials, 8)
		c.Add(time.Hour)
		stores := []store.Store{s, s}
		if p, ok := s.(*pgStore); ok {
			// A second core on the same database.
			other := openPostgresAt(t, p.connString, postgresOptions(c.Now, 2))
			stores = append(stores, other, other)
		}
		var wg sync.WaitGroup
		results := make([]store.PruneResult, len(stores))
		errs := make([]error, len(stores))
		for i, st := range stores {
			wg.Go(func() { results[i], errs[i] = st.PruneAudit(t.Context(), day(6), admin) })
		}
		wg.Wait()
		total := 0
		for i, err := range errs {
			if err != nil && !errors.Is(err, store.ErrPruneRunning) {
				t.Fatalf("prune %d: %v", i, err)
			}
			total += results[i].Events
		}
		// Per device: certificates seen on days 0-4 (5 is the newest
		// before day 6 and stays); the data change and reprovision stay.
		// The group: its changes on days 1 and 3 (5 stays).
		if want := len(serials)*5 + 2; total != want {
			t.Errorf("prunes removed %d events in all, want %d: %+v %v", total, want, results, errs)
		}
		for _, serial := range serials {
			n := 0
			for _, ev := range trail(t, s, "device/"+serial) {
				if ev.Action == store.ActionPruned {
					n++
					if ev.Detail[store.PrunedEvents] != "5" {
						t.Errorf("device %s: summary %v", serial, ev.Detail)
					}
				}
			}
			if n != 1 {
				t.Errorf("device %s: %d summaries", serial, n)
			}
		}
	})
}

func postgresOptions(now func() time.Time, batch int) postgres.Options {
	return postgres.Options{Now: now, PruneBatch: batch}
}
