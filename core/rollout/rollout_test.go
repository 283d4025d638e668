package rollout_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/rollout"
	"github.com/fleetprov/prov/core/store"
)

func serials(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%010x", i))
	}
	return out
}

func TestPlan(t *testing.T) {
	members := serials(101)
	waves, p, err := rollout.Plan(&coreapi.RolloutRequest{Canary: []string{members[3], members[3]}, Percent: []float64{10, 50, 100}}, members)
	if err != nil {
		t.Fatal(err)
	}
	// 100 members after the canary: 10, 40, 50, then an empty rest.
	if len(waves) != 5 || len(waves[0].Serials) != 1 || waves[1].Size != 10 || waves[2].Size != 40 || waves[3].Size != 50 || !waves[4].Rest {
		t.Fatalf("waves %+v", waves)
	}
	if p.MinHealthyPercent != 100 || p.WaveTimeoutSeconds != 1800 || p.MaxFailedPercent != 0 {
		t.Fatalf("defaults %+v", p)
	}
	for _, bad := range []struct {
		req   coreapi.RolloutRequest
		field string
	}{
		{coreapi.RolloutRequest{Canary: []string{"ffffffffff"}}, "canary"},
		{coreapi.RolloutRequest{Percent: []float64{50, 10}}, "percent[1]"},
		{coreapi.RolloutRequest{Percent: []float64{101}}, "percent[0]"},
		{coreapi.RolloutRequest{Sizes: []int{0}}, "sizes[0]"},
		{coreapi.RolloutRequest{Percent: []float64{1}, Sizes: []int{1}}, "percent"},
		{coreapi.RolloutRequest{Policy: coreapi.RolloutPolicy{MinHealthyPercent: 120}}, "policy.minHealthyPercent"},
		{coreapi.RolloutRequest{Policy: coreapi.RolloutPolicy{MaxFailedPercent: -1}}, "policy.maxFailedPercent"},
	} {
		_, _, err := rollout.Plan(&bad.req, members)
		var br *rollout.BadRequest
		if !errors.As(err, &br) || br.Field != bad.field {
			t.Errorf("%+v: %v, want a refusal naming %s", bad.req, err, bad.field)
		}
	}
}

// Each rollout takes its own sample, the same on every core.
func TestOrder(t *testing.T) {
	held := serials(200)
	a, b := rollout.Order(1, held), rollout.Order(1, slices.Clone(held))
	if !slices.Equal(a, b) {
		t.Fatal("the order depends on more than the rollout and the serials")
	}
	if c := rollout.Order(2, held); slices.Equal(a[:20], c[:20]) {
		t.Fatal("two rollouts release the same first members")
	}
	if slices.Equal(a[:20], held[:20]) {
		t.Fatal("the order is the serials' order")
	}
	sorted := slices.Clone(a)
	slices.Sort(sorted)
	if !slices.Equal(sorted, held) {
		t.Fatal("the order lost or added members")
	}
}

func state(serial string, gen uint64, rep *coreapi.ReportState, repGen uint64) store.MemberState {
	m := store.MemberState{Serial: serial, Status: store.Active, Generation: gen}
	if rep != nil {
		m.Report = &store.Report{Report: coreapi.Report{Generation: repGen, State: *rep, Error: "boom"}}
	}
	return m
}

func TestTallyAndDecide(t *testing.T) {
	healthy, failed, mounted := coreapi.StateHealthy, coreapi.StateFailed, coreapi.StateMounted
	st := rollout.Tally(1, []store.MemberState{
		state("a", 5, &healthy, 5), state("b", 5, &healthy, 4), state("c", 5, &failed, 5), state("d", 5, &mounted, 5), state("e", 5, nil, 0),
		{Serial: "f", Status: store.Revoked, Generation: 5},
	})
	if st.Members != 5 || st.Healthy != 1 || st.Failed != 1 || st.Pending != 3 || len(st.Failures) != 1 || st.Failures[0].Serial != "c" {
		t.Fatalf("tally %+v", st)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ro := &coreapi.Rollout{State: coreapi.RolloutRunning, Waves: make([]coreapi.Wave, 3), Released: 2, ReleasedAt: now.Add(-time.Minute)}
	if d := rollout.Decide(ro, &st, now); d.Action != rollout.Pause || !strings.Contains(d.Reason, "wave 1: 1 of 5 failed; c: boom") {
		t.Fatalf("a failure: %+v", d)
	}
	ro.Policy.MaxFailedPercent = 20 // one of five may fail
	if d := rollout.Decide(ro, &st, now); d.Action != rollout.Wait {
		t.Fatalf("within the failure budget, not healthy enough: %+v", d)
	}
	ro.Policy.MinHealthyPercent = 20
	if d := rollout.Decide(ro, &st, now); d.Action != rollout.Release {
		t.Fatalf("healthy enough: %+v", d)
	}
	ro.Released = 3
	if d := rollout.Decide(ro, &st, now); d.Action != rollout.Finish {
		t.Fatalf("the last wave healthy enough: %+v", d)
	}
	ro.Policy.MinHealthyPercent, ro.Policy.WaveTimeoutSeconds = 100, 30
	if d := rollout.Decide(ro, &st, now); d.Action != rollout.Pause || !strings.Contains(d.Reason, "1 of 5 healthy after 30s, 5 needed") {
		t.Fatalf("the timeout: %+v", d)
	}
	ro.State = coreapi.RolloutPaused
	if d := rollout.Decide(ro, &st, now); d.Action != rollout.Wait {
		t.Fatalf("paused: %+v", d)
	}
	ro.State, ro.Released = coreapi.RolloutRunning, 0
	if d := rollout.Decide(ro, nil, now); d.Action != rollout.Release {
		t.Fatalf("the first wave: %+v", d)
	}
	empty := rollout.Tally(2, nil)
	ro.Released = 2
	if d := rollout.Decide(ro, &empty, now); d.Action != rollout.Release {
		t.Fatalf("an empty wave: %+v", d)
	}
}
