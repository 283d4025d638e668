package store

import (
	"fmt"
	"slices"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// Rollout is a staged change of a group's data (coreapi.Rollout): the
// store keeps its record, which members it holds at the data they had,
// and which members each wave released. Deciding when to release a wave,
// pause or finish is core/rollout's; the store makes each such step one
// durable write.
//
// How a rollout changes generations without sending a bad change to
// every member: it changes the group's data at once (version V to V+1),
// but first keeps version V's record and holds every member at it: a
// held member is read with V's data (View.Held), so its generation and
// image do not change. Releasing a member removes its hold: it moves to
// V+1, and a job (or the change worker) tells it. An abort changes the
// group's data back to V's as version V+2: the released members move
// forward to it; the held ones stay at V, which has the same data, and
// are told nothing. Generations only grow throughout.
type Rollout = coreapi.Rollout

// RolloutStep is one durable step of a rollout (StepRollout).
type RolloutStep struct {
	// Next is the rollout as it is to be stored; the store sets its Rev
	// and UpdatedAt.
	Next *Rollout
	// IfRev is the rev it was computed from (ErrConflict if it moved).
	IfRev uint64
	// Release are members to release as wave Wave: their holds are
	// removed and each is told of its new generation; members already
	// released are recorded in the wave all the same.
	Release []string
	Wave    int
	// Event is the step's audit event on the group's trail.
	Actor, Action string
	Detail        map[string]string
}

// CheckStep refuses a step of a rollout that is over, or was changed
// since it was read.
func CheckStep(stored *Rollout, ifRev uint64) error {
	if !stored.State.Active() {
		return fmt.Errorf("rollout %d is %s: %w", stored.ID, stored.State, ErrRolloutOver)
	}
	if stored.Rev != ifRev {
		return fmt.Errorf("rollout %d is at rev %d, not %d: %w", stored.ID, stored.Rev, ifRev, ErrConflict)
	}
	return nil
}

// StartRolloutRecord fills what the store decides of a new rollout from its
// group g as it was (before the change) and now.
func StartRolloutRecord(ro *Rollout, g *Group, id uint64, actor string, c Change) *Rollout {
	out := *ro
	out.ID, out.Group, out.State = id, g.Name, coreapi.RolloutRunning
	out.FromVersion, out.ToVersion = g.Version, g.Version+1
	out.CreatedBy, out.Rev = actor, 1
	out.Change = ChangeKeys(c)
	return &out
}

// ChangeKeys are the keys a change sets and removes, in order.
func ChangeKeys(c Change) []string {
	var keys []string
	for k := range c.Set {
		keys = append(keys, k)
	}
	keys = append(keys, c.Unset...)
	slices.Sort(keys)
	return keys
}
