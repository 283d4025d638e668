package registry

import (
	"strconv"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
)

// Report keeps a device's report of what it runs (the device's own
// serial: the HTTP edge checks the identity). A report that could
// release a rollout's next wave, or pause it, wakes the rollouts.
func (r *Registry) Report(serial string, rep coreapi.Report) (*store.Report, error) {
	if err := rep.Check(); err != nil {
		return nil, &BadInput{Field: "report", Reason: err.Error()}
	}
	saved, err := r.store.SaveReport(serial, rep)
	if err != nil {
		return nil, err
	}
	if rep.State == coreapi.StateFailed {
		r.log.Warn("a device reports a failed generation", "serial", serial, "generation", rep.Generation, "running", rep.Running, "error", rep.Error)
	}
	r.rollouts.wake()
	return saved, nil
}

// DeviceReport is a device's latest report; nil if it never reported.
func (r *Registry) DeviceReport(serial string) (*store.Report, error) { return r.store.Report(serial) }

// DefaultStaleAfter is how long a device may go without a report before
// the fleet view counts it stale: devices report at every change and at
// least daily.
const DefaultStaleAfter = 26 * time.Hour

// Fleet is what a group's members run, counted from their latest reports
// (one pass over the group in the store).
func (r *Registry) Fleet(group string, staleAfter time.Duration, now time.Time) (*coreapi.Fleet, error) {
	g, err := r.Group(group)
	if err != nil {
		return nil, err
	}
	if staleAfter <= 0 {
		staleAfter = DefaultStaleAfter
	}
	f := &coreapi.Fleet{Group: group, Version: g.Version, Generations: map[string]int{}, States: map[coreapi.ReportState]int{},
		StaleAfterSeconds: int(staleAfter / time.Second)}
	err = r.store.GroupStates(group, func(m store.MemberState) error {
		f.Members++
		if m.Status == store.Revoked {
			f.Revoked++
		}
		if m.Held {
			f.Held++
		}
		rep := m.Report
		if rep == nil {
			f.Generations["none"]++
			f.States["none"]++
			f.Stale++
			f.Behind++
			return nil
		}
		f.Generations[strconv.FormatUint(rep.Running, 10)]++
		f.States[rep.State]++
		if rep.Received.After(f.LastSeen) {
			f.LastSeen = rep.Received
		}
		if now.Sub(rep.Received) > staleAfter {
			f.Stale++
		}
		switch {
		case rep.Generation == m.Generation && rep.State == coreapi.StateHealthy:
			f.Current++
		case rep.Generation < m.Generation || rep.Running < m.Generation:
			f.Behind++
		}
		if rep.State == coreapi.StateFailed && len(f.Failed) < 20 {
			f.Failed = append(f.Failed, coreapi.WaveFailure{Serial: m.Serial, Error: rep.Error})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if g.Rollout != 0 {
		if f.Rollout, err = r.store.Rollout(g.Rollout); err != nil {
			return nil, err
		}
	}
	return f, nil
}
