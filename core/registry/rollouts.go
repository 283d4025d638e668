package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/rollout"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
)

// Rollouts: an admin starts a staged change of a group's data
// (StartRollout); RunRollouts, on every core, releases each wave once the
// one before is healthy enough by its members' reports, and pauses the
// rollout when too many fail or too few report in time (core/rollout
// decides, the store makes each step one write). An admin pauses,
// resumes, forces or aborts it (RolloutAction).

// DefaultRolloutTick is how often RunRollouts looks at running rollouts
// without being woken by a report.
const DefaultRolloutTick = 5 * time.Second

// actorCore is the actor of the steps core takes on its own.
const actorCore = "core"

// manyReleased is the size of a release from which the change worker is
// told of the whole group rather than of each member: its queue is
// bounded, and a group job reaches every member (held ones are told the
// generation they have).
const manyReleased = 1000

type rolloutRunner struct {
	kick  chan struct{}
	steps *prometheus.CounterVec
}

func newRolloutRunner() *rolloutRunner {
	return &rolloutRunner{kick: make(chan struct{}, 1), steps: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "prov_core_rollout_steps_total", Help: "Steps of rollouts by action (start, release, pause, resume, force, finish, abort).",
	}, []string{"action"})}
}

func (w *rolloutRunner) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// StartRollout starts a staged change of a group still at version
// ifVersion: the change is checked as any change of its data, and no
// member moves until RunRollouts releases it.
func (r *Registry) StartRollout(group string, ifVersion uint64, req coreapi.RolloutRequest, by pki.Identity) (*store.Rollout, error) {
	if !r.policy.HasGroup(group) {
		return nil, ErrNoSuchGroup
	}
	if len(req.Set) == 0 && len(req.Unset) == 0 {
		return nil, &BadInput{Field: "set", Reason: "a rollout changes data: give set or unset"}
	}
	var members []string
	if err := r.store.GroupMembers(group, func(serial string) error { members = append(members, serial); return nil }); err != nil {
		return nil, err
	}
	waves, policy, err := rollout.Plan(&req, members)
	var bad *rollout.BadRequest
	if errors.As(err, &bad) {
		return nil, &BadInput{Field: bad.Field, Reason: bad.Reason}
	} else if err != nil {
		return nil, err
	}
	ro, _, err := r.store.StartRollout(&store.Rollout{Group: group, Waves: waves, Policy: policy}, ifVersion,
		store.Change{Set: req.Set, Unset: req.Unset}, by.String(), func(g *store.Group) error { return r.policy.CheckData(g.Data) })
	if err != nil {
		return nil, err
	}
	r.rollouts.steps.WithLabelValues("start").Inc()
	r.log.Info("rollout started", "rollout", ro.ID, "group", group, "waves", len(ro.Waves), "members", ro.Members, "by", by.String())
	r.rollouts.wake()
	return ro, nil
}

// Rollout reads a rollout with the status of each wave it released.
func (r *Registry) Rollout(id uint64) (*store.Rollout, error) {
	ro, err := r.store.Rollout(id)
	if err != nil {
		return nil, err
	}
	for w := range ro.Released {
		st, err := r.waveStatus(ro.ID, w)
		if err != nil {
			return nil, err
		}
		ro.Status = append(ro.Status, *st)
	}
	if ro.State.Active() {
		if err := r.store.HeldMembers(ro.Group, func(string) error { ro.Held++; return nil }); err != nil {
			return nil, err
		}
	}
	return ro, nil
}

// GroupRollouts are a group's rollouts, newest first.
func (r *Registry) GroupRollouts(group string) ([]store.Rollout, error) {
	if !r.policy.HasGroup(group) {
		return nil, ErrNoSuchGroup
	}
	return r.store.Rollouts(group, false)
}

func (r *Registry) waveStatus(id uint64, wave int) (*coreapi.WaveStatus, error) {
	var members []store.MemberState
	if err := r.store.WaveStates(id, wave, func(m store.MemberState) error { members = append(members, m); return nil }); err != nil {
		return nil, err
	}
	st := rollout.Tally(wave, members)
	return &st, nil
}

// Admin actions on a rollout.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionForce  = "force"
	ActionAbort  = "abort"
)

// RolloutAction is an admin's pause, resume, force (release the next
// wave now, whatever the last one reports) or abort (the group's data
// back as it was, as a new version: the members released so far move to
// it, the others never saw the change) of a rollout still at rev ifRev.
func (r *Registry) RolloutAction(id, ifRev uint64, action, reason string, by pki.Identity) (*store.Rollout, error) {
	ro, err := r.store.Rollout(id)
	if err != nil {
		return nil, err
	}
	if err := store.CheckStep(ro, ifRev); err != nil {
		return nil, err
	}
	if reason == "" {
		reason = action + " by " + by.String()
	}
	next := *ro
	next.Reason = reason
	var out *store.Rollout
	switch action {
	case ActionPause:
		next.State = coreapi.RolloutPaused
		out, _, err = r.store.StepRollout(store.RolloutStep{Next: &next, IfRev: ifRev, Actor: by.String(), Action: "rollout pause", Detail: map[string]string{"reason": reason}})
	case ActionResume:
		next.State, next.ReleasedAt = coreapi.RolloutRunning, time.Now().UTC()
		out, _, err = r.store.StepRollout(store.RolloutStep{Next: &next, IfRev: ifRev, Actor: by.String(), Action: "rollout resume", Detail: map[string]string{"reason": reason}})
	case ActionForce:
		next.State = coreapi.RolloutRunning
		out, err = r.release(&next, ifRev, by.String(), "rollout force", reason)
	case ActionAbort:
		out, err = r.abort(ro, ifRev, by.String(), reason)
	default:
		return nil, &BadInput{Field: "action", Reason: "want pause, resume, force or abort"}
	}
	if err != nil {
		return nil, err
	}
	r.rollouts.steps.WithLabelValues(action).Inc()
	r.log.Info("rollout "+action, "rollout", id, "group", ro.Group, "by", by.String(), "reason", reason)
	r.rollouts.wake()
	return out, nil
}

func (r *Registry) abort(ro *store.Rollout, ifRev uint64, actor, reason string) (*store.Rollout, error) {
	out, _, err := r.store.AbortRollout(ro, ifRev, actor, reason, func(g *store.Group) error { return r.policy.CheckData(g.Data) })
	if err != nil {
		return nil, err
	}
	r.changes.GroupChanged(ro.Group)
	return out, nil
}

// release releases the next wave of next (or, after the last, finishes
// it) in one step, and tells the change worker.
func (r *Registry) release(next *store.Rollout, ifRev uint64, actor, action, reason string) (*store.Rollout, error) {
	if next.Released >= len(next.Waves) {
		next.State = coreapi.RolloutDone
		out, _, err := r.store.StepRollout(store.RolloutStep{Next: next, IfRev: ifRev, Actor: actor, Action: "rollout done", Detail: map[string]string{"reason": reason}})
		return out, err
	}
	wave := next.Released
	serials, err := r.waveMembers(next, next.Waves[wave])
	if err != nil {
		return nil, err
	}
	next.Released, next.ReleasedAt = wave+1, time.Now().UTC()
	out, released, err := r.store.StepRollout(store.RolloutStep{Next: next, IfRev: ifRev, Release: serials, Wave: wave, Actor: actor, Action: action,
		Detail: map[string]string{"wave": fmt.Sprint(wave), "reason": reason}})
	if err != nil {
		return nil, err
	}
	if len(released) >= manyReleased {
		r.changes.GroupChanged(next.Group)
	} else {
		for _, serial := range released {
			r.changes.DeviceChanged(serial)
		}
	}
	r.log.Info("rollout wave released", "rollout", next.ID, "group", next.Group, "wave", wave, "members", len(serials), "released", len(released))
	return out, nil
}

// waveMembers are the members a wave releases: its named boards, or the
// next Size held members in the rollout's order, or (the last) every
// member still held.
func (r *Registry) waveMembers(ro *store.Rollout, w coreapi.Wave) ([]string, error) {
	if len(w.Serials) > 0 {
		return w.Serials, nil
	}
	var held []string
	if err := r.store.HeldMembers(ro.Group, func(serial string) error { held = append(held, serial); return nil }); err != nil {
		return nil, err
	}
	if w.Rest {
		return held, nil
	}
	ordered := rollout.Order(ro.ID, held)
	return ordered[:min(w.Size, len(ordered))], nil
}

// RunRollouts carries running rollouts forward until ctx ends: every
// tick, and whenever a report or an admin's action wakes it. Each core
// runs it; the store's If-Match on a rollout's rev lets one of them take
// each step, the others find it taken (ErrConflict) and look again.
func (r *Registry) RunRollouts(ctx context.Context) error {
	tick := r.o.RolloutTick
	if tick <= 0 {
		tick = DefaultRolloutTick
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	// A round reads the last wave's members whole: however fast reports
	// come in (a large wave reporting), at most one round a second.
	gap := min(tick, time.Second)
	for {
		r.rolloutRound()
		pause := time.NewTimer(gap)
		select {
		case <-ctx.Done():
			pause.Stop()
			return nil
		case <-pause.C:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.rollouts.kick:
		}
	}
}

// rolloutRound takes the next step of every running rollout that has one.
func (r *Registry) rolloutRound() {
	active, err := r.store.Rollouts("", true)
	if err != nil {
		r.log.Error("cannot read the active rollouts", "err", err)
		return
	}
	for i := range active {
		ro := &active[i]
		if ro.State != coreapi.RolloutRunning {
			continue
		}
		if err := r.advance(ro); err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrRolloutOver) {
			r.log.Error("rollout step failed; tried again", "rollout", ro.ID, "group", ro.Group, "err", err)
		}
	}
}

// advance takes running rollout ro's next step, if it has one.
func (r *Registry) advance(ro *store.Rollout) error {
	var last *coreapi.WaveStatus
	if ro.Released > 0 {
		var err error
		if last, err = r.waveStatus(ro.ID, ro.Released-1); err != nil {
			return err
		}
	}
	d := rollout.Decide(ro, last, time.Now())
	next := *ro
	switch d.Action {
	case rollout.Release, rollout.Finish:
		if _, err := r.release(&next, ro.Rev, actorCore, "rollout wave", d.Reason); err != nil {
			return err
		}
		action := "release"
		if d.Action == rollout.Finish {
			action = "finish"
			r.log.Info("rollout done", "rollout", ro.ID, "group", ro.Group)
		}
		r.rollouts.steps.WithLabelValues(action).Inc()
		r.rollouts.wake() // the next wave may be due at once (an empty one)
	case rollout.Pause:
		next.State, next.Reason = coreapi.RolloutPaused, d.Reason
		if _, _, err := r.store.StepRollout(store.RolloutStep{Next: &next, IfRev: ro.Rev, Actor: actorCore, Action: "rollout pause",
			Detail: map[string]string{"reason": d.Reason}}); err != nil {
			return err
		}
		r.rollouts.steps.WithLabelValues("pause").Inc()
		r.log.Warn("rollout paused", "rollout", ro.ID, "group", ro.Group, "reason", d.Reason)
	}
	return nil
}
