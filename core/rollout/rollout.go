// Package rollout is what a staged change of a group's data decides, away
// from the store and the API: the waves a request asks for (Plan), the
// order held members are released in (Order), how a released wave is
// doing by its members' reports (Tally), and what a running rollout does
// next (Decide). core/registry carries its decisions out, each step one
// write of the store; several cores may decide at once, and the store's
// If-Match on the rollout's rev lets one of them win.
package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
)

// Limits of a request.
const (
	MaxWaves   = 32
	MaxCanary  = 1000
	maxReasons = 5 // failures kept in a wave's status
)

// BadRequest is a field of a rollout request that is wrong.
type BadRequest struct{ Field, Reason string }

func (e *BadRequest) Error() string { return e.Field + ": " + e.Reason }

// Plan resolves a request's waves against the group's members (serials
// of the group now): the canaries as a wave of their own, then a wave of
// each size (percentages turned into sizes of the members that are not
// canaries), then a last wave of the rest. The policy gets its defaults.
func Plan(req *coreapi.RolloutRequest, members []string) ([]coreapi.Wave, coreapi.RolloutPolicy, error) {
	p := req.Policy.WithDefaults()
	switch {
	case p.MinHealthyPercent < 0 || p.MinHealthyPercent > 100:
		return nil, p, &BadRequest{"policy.minHealthyPercent", "want 0 to 100"}
	case p.MaxFailedPercent < 0 || p.MaxFailedPercent > 100:
		return nil, p, &BadRequest{"policy.maxFailedPercent", "want 0 to 100"}
	case p.WaveTimeoutSeconds < 0:
		return nil, p, &BadRequest{"policy.waveTimeoutSeconds", "want a positive number of seconds"}
	case len(req.Percent) > 0 && len(req.Sizes) > 0:
		return nil, p, &BadRequest{"percent", "give percent or sizes, not both"}
	case len(req.Canary) > MaxCanary:
		return nil, p, &BadRequest{"canary", fmt.Sprintf("at most %d boards", MaxCanary)}
	case len(req.Percent)+len(req.Sizes)+2 > MaxWaves:
		return nil, p, &BadRequest{"percent", fmt.Sprintf("at most %d waves", MaxWaves)}
	}
	var waves []coreapi.Wave
	canaries := 0
	if len(req.Canary) > 0 {
		canary := slices.Clone(req.Canary)
		slices.Sort(canary)
		canary = slices.Compact(canary)
		for _, serial := range canary {
			if _, found := slices.BinarySearch(members, serial); !found {
				return nil, p, &BadRequest{"canary", fmt.Sprintf("%q is not a member of the group", truncate(serial))}
			}
		}
		waves = append(waves, coreapi.Wave{Serials: canary})
		canaries = len(canary)
	}
	rest := len(members) - canaries
	prev := 0.0
	released := 0
	for i, pct := range req.Percent {
		if pct <= prev || pct > 100 {
			return nil, p, &BadRequest{fmt.Sprintf("percent[%d]", i), "want percentages that grow, up to 100"}
		}
		prev = pct
		upto := int(math.Ceil(pct / 100 * float64(rest)))
		waves = append(waves, coreapi.Wave{Size: upto - released})
		released = upto
	}
	for i, n := range req.Sizes {
		if n <= 0 {
			return nil, p, &BadRequest{fmt.Sprintf("sizes[%d]", i), "want a positive number of boards"}
		}
		waves = append(waves, coreapi.Wave{Size: n})
	}
	waves = append(waves, coreapi.Wave{Rest: true})
	return waves, p, nil
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// Order sorts held members in the order rollout id releases them: by a
// hash of the rollout and the serial, so each rollout takes another
// sample of the group, and every core computes the same one.
func Order(id uint64, held []string) []string {
	rank := func(serial string) uint64 {
		h := sha256.New()
		_ = binary.Write(h, binary.BigEndian, id)
		h.Write([]byte(serial))
		return binary.BigEndian.Uint64(h.Sum(nil))
	}
	type ranked struct {
		serial string
		rank   uint64
	}
	rs := make([]ranked, len(held))
	for i, s := range held {
		rs[i] = ranked{s, rank(s)}
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if c := cmpU64(a.rank, b.rank); c != 0 {
			return c
		}
		return strings.Compare(a.serial, b.serial)
	})
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.serial
	}
	return out
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Tally is a released wave's status from its members' states: healthy or
// failed at the generation core has for them now, or pending. Revoked
// members do not count.
func Tally(wave int, members []store.MemberState) coreapi.WaveStatus {
	st := coreapi.WaveStatus{Wave: wave}
	for _, m := range members {
		if m.Status == store.Revoked {
			continue
		}
		st.Members++
		r := m.Report
		switch {
		case r == nil || r.Generation != m.Generation || m.Held:
			st.Pending++
		case r.State == coreapi.StateHealthy:
			st.Healthy++
		case r.State == coreapi.StateFailed:
			st.Failed++
			if len(st.Failures) < maxReasons {
				st.Failures = append(st.Failures, coreapi.WaveFailure{Serial: m.Serial, Error: r.Error})
			}
		default:
			st.Pending++
		}
	}
	return st
}

// Action is what a running rollout does next.
type Action int

// Actions.
const (
	Wait    Action = iota // nothing yet
	Release               // release the next wave
	Pause                 // pause: the reason says why
	Finish                // every wave released and healthy enough: done
)

// Decision is Decide's answer.
type Decision struct {
	Action Action
	Reason string
}

// Decide says what running rollout ro does next, given the status of the
// wave it released last (nil before the first).
func Decide(ro *coreapi.Rollout, last *coreapi.WaveStatus, now time.Time) Decision {
	if ro.State != coreapi.RolloutRunning {
		return Decision{Action: Wait}
	}
	if ro.Released == 0 || last == nil {
		return Decision{Action: Release}
	}
	p := ro.Policy.WithDefaults()
	wave := ro.Released - 1
	allowed := int(math.Floor(p.MaxFailedPercent / 100 * float64(last.Members)))
	if last.Failed > allowed {
		return Decision{Action: Pause, Reason: failureReason(wave, last)}
	}
	need := int(math.Ceil(p.MinHealthyPercent / 100 * float64(last.Members)))
	if last.Healthy >= need {
		if ro.Released >= len(ro.Waves) {
			return Decision{Action: Finish, Reason: fmt.Sprintf("wave %d: %d of %d healthy", wave, last.Healthy, last.Members)}
		}
		return Decision{Action: Release, Reason: fmt.Sprintf("wave %d: %d of %d healthy", wave, last.Healthy, last.Members)}
	}
	timeout := time.Duration(p.WaveTimeoutSeconds) * time.Second
	if !ro.ReleasedAt.IsZero() && now.Sub(ro.ReleasedAt) >= timeout {
		return Decision{Action: Pause, Reason: fmt.Sprintf("wave %d: %d of %d healthy after %s, %d needed (%d pending, %d failed)",
			wave, last.Healthy, last.Members, timeout, need, last.Pending, last.Failed)}
	}
	return Decision{Action: Wait}
}

func failureReason(wave int, st *coreapi.WaveStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "wave %d: %d of %d failed", wave, st.Failed, st.Members)
	for i, f := range st.Failures {
		if i == 2 {
			b.WriteString("; …")
			break
		}
		msg := shorten(f.Error)
		fmt.Fprintf(&b, "; %s: %s", f.Serial, msg)
	}
	return b.String()
}

// shorten keeps the start of a long error (what failed) and its end (a
// health check's output ends it), cut at valid UTF-8.
func shorten(s string) string {
	const head, tail = 60, 140
	if len(s) <= head+tail {
		return s
	}
	return strings.ToValidUTF8(s[:head], "") + " … " + strings.ToValidUTF8(s[len(s)-tail:], "")
}
