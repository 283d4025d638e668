package store_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
)

func TestReports(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		v, _, err := s.Register(reg(t, "10000000abcdef12"))
		if err != nil {
			t.Fatal(err)
		}
		if r, err := s.Report(v.Serial); err != nil || r != nil {
			t.Fatalf("a device that never reported: %v %v", r, err)
		}
		at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
		r := coreapi.Report{Generation: 1, State: coreapi.StateMounted, Running: 1, BootID: "b1", At: at}
		if _, err := s.SaveReport(v.Serial, r); err != nil {
			t.Fatal(err)
		}
		// The same report again: no new event.
		if _, err := s.SaveReport(v.Serial, r); err != nil {
			t.Fatal(err)
		}
		r.State, r.At = coreapi.StateHealthy, at.Add(time.Second)
		if _, err := s.SaveReport(v.Serial, r); err != nil {
			t.Fatal(err)
		}
		// A retry overtaken by the newer report changes nothing.
		old := coreapi.Report{Generation: 1, State: coreapi.StateMounted, Running: 1, BootID: "b1", At: at}
		if got, err := s.SaveReport(v.Serial, old); err != nil || got.State != coreapi.StateHealthy {
			t.Fatalf("an older report of the same boot: %+v %v", got, err)
		}
		got, err := s.Report(v.Serial)
		if err != nil || got.State != coreapi.StateHealthy || got.Received.IsZero() || !got.At.Equal(r.At) {
			t.Fatalf("stored %+v %v", got, err)
		}
		events, err := s.Audit("device/"+v.Serial, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var states []string
		for _, ev := range events {
			if ev.Action == "report" {
				states = append(states, ev.Detail["state"])
			}
		}
		if fmt.Sprint(states) != "[mounted healthy]" {
			t.Fatalf("report events %v, want one per transition", states)
		}
		if _, err := s.SaveReport("0000000000", r); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a report of an unknown device: %v", err)
		}
		var members []store.MemberState
		if err := s.GroupStates("default", func(m store.MemberState) error { members = append(members, m); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(members) != 1 || members[0].Report == nil || members[0].Report.State != coreapi.StateHealthy || members[0].Generation != 1 {
			t.Fatalf("group states %+v", members)
		}
		s = e.restart(t, s)
		if got, err := s.Report(v.Serial); err != nil || got.State != coreapi.StateHealthy {
			t.Fatalf("after restart %+v %v", got, err)
		}
	})
}

// TestRolloutHoldsReleasesAndAborts walks a rollout through the store:
// held members keep their generation and data, released ones move, an
// abort moves the released ones forward to the old data and leaves the
// held ones alone, and generations only grow.
func TestRolloutHoldsReleasesAndAborts(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		var serials []string
		for i := range 4 {
			v, _, err := s.Register(reg(t, fmt.Sprintf("10000000abcdef%02x", i)))
			if err != nil {
				t.Fatal(err)
			}
			serials = append(serials, v.Serial)
		}
		ok := func(*store.Group) error { return nil }
		bad := store.Change{Set: map[string]string{"/etc/prov/data/a": "bad"}}
		ro, g, err := s.StartRollout(&store.Rollout{Group: "default", Waves: []coreapi.Wave{{Serials: serials[:1]}, {Rest: true}}}, 0, bad, "admin", ok)
		if err != nil {
			t.Fatal(err)
		}
		if ro.ID == 0 || ro.FromVersion != 0 || ro.ToVersion != 1 || g.Version != 1 || g.Rollout != ro.ID || ro.Members != 4 || ro.State != coreapi.RolloutRunning {
			t.Fatalf("started %+v group %+v", ro, g)
		}
		// Every member held: nothing moved.
		for _, serial := range serials {
			v, err := s.Device(serial)
			if err != nil || !v.Held || v.Generation() != 1 || v.EffectiveData()["/etc/prov/data/a"] != "1" {
				t.Fatalf("held %s: %+v %v", serial, v, err)
			}
		}
		// No plain change, no second rollout meanwhile.
		if _, err := s.SetGroupData("default", 1, bad, "admin", ok); !errors.Is(err, store.ErrRolloutActive) {
			t.Fatalf("a plain change during a rollout: %v", err)
		}
		if _, _, err := s.StartRollout(&store.Rollout{Group: "default"}, 1, bad, "admin", ok); !errors.Is(err, store.ErrRolloutActive) {
			t.Fatalf("a second rollout: %v", err)
		}
		// Release the canary.
		next := *ro
		next.Released, next.ReleasedAt = 1, time.Now().UTC()
		ro2, released, err := s.StepRollout(store.RolloutStep{Next: &next, IfRev: ro.Rev, Release: serials[:1], Wave: 0, Actor: "core", Action: "rollout wave"})
		if err != nil || fmt.Sprint(released) != fmt.Sprint(serials[:1]) || ro2.Rev != ro.Rev+1 {
			t.Fatalf("release: %+v %v %v", ro2, released, err)
		}
		if _, _, err := s.StepRollout(store.RolloutStep{Next: &next, IfRev: ro.Rev, Actor: "core", Action: "rollout wave"}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("a step from a stale rev: %v", err)
		}
		canary, err := s.Device(serials[0])
		if err != nil || canary.Held || canary.Generation() != 2 || canary.EffectiveData()["/etc/prov/data/a"] != "bad" {
			t.Fatalf("canary %+v %v", canary, err)
		}
		var wave []string
		if err := s.WaveStates(ro.ID, 0, func(m store.MemberState) error { wave = append(wave, m.Serial); return nil }); err != nil || fmt.Sprint(wave) != fmt.Sprint(serials[:1]) {
			t.Fatalf("wave 0: %v %v", wave, err)
		}
		var held []string
		if err := s.HeldMembers("default", func(serial string) error { held = append(held, serial); return nil }); err != nil || len(held) != 3 {
			t.Fatalf("held %v %v", held, err)
		}
		// Across a restart, the same.
		s = e.restart(t, s)
		if v, err := s.Device(serials[1]); err != nil || !v.Held || v.Generation() != 1 {
			t.Fatalf("held after restart %+v %v", v, err)
		}
		// Abort: the canary moves forward to the old data; the others stay.
		ro3, g3, err := s.AbortRollout(ro2, ro2.Rev, "admin", "canary failed", ok)
		if err != nil || ro3.State != coreapi.RolloutAborted || g3.Version != 2 || ro3.AbortVersion != 2 || g3.Rollout != 0 {
			t.Fatalf("abort %+v %+v %v", ro3, g3, err)
		}
		if v, err := s.Device(serials[0]); err != nil || v.Generation() != 3 || v.EffectiveData()["/etc/prov/data/a"] != "1" {
			t.Fatalf("canary after abort %+v %v", v, err)
		}
		if v, err := s.Device(serials[1]); err != nil || !v.Held || v.Generation() != 1 || v.EffectiveData()["/etc/prov/data/a"] != "1" {
			t.Fatalf("held after abort %+v %v", v, err)
		}
		if _, _, err := s.StepRollout(store.RolloutStep{Next: ro3, IfRev: ro3.Rev, Actor: "core", Action: "x"}); !errors.Is(err, store.ErrRolloutOver) {
			t.Fatalf("a step after the abort: %v", err)
		}
		// A plain change now moves everyone, the held ones too.
		good := store.Change{Set: map[string]string{"/etc/prov/data/a": "good"}}
		if _, err := s.SetGroupData("default", 2, good, "admin", ok); err != nil {
			t.Fatal(err)
		}
		for _, serial := range serials {
			v, err := s.Device(serial)
			if err != nil || v.Held || v.Generation() != 4 || v.EffectiveData()["/etc/prov/data/a"] != "good" {
				t.Fatalf("after a plain change %s: %+v %v", serial, v, err)
			}
		}
		list, err := s.Rollouts("default", false)
		if err != nil || len(list) != 1 || list[0].State != coreapi.RolloutAborted {
			t.Fatalf("rollouts %+v %v", list, err)
		}
		if active, err := s.Rollouts("", true); err != nil || len(active) != 0 {
			t.Fatalf("active %+v %v", active, err)
		}
	})
}

// TestRolloutDone: the last step releases the rest and ends the rollout.
func TestRolloutDone(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		var serials []string
		for i := range 3 {
			v, _, err := s.Register(reg(t, fmt.Sprintf("10000000abcdef%02x", i)))
			if err != nil {
				t.Fatal(err)
			}
			serials = append(serials, v.Serial)
		}
		ok := func(*store.Group) error { return nil }
		ro, _, err := s.StartRollout(&store.Rollout{Group: "default"}, 0, store.Change{Set: map[string]string{"/etc/prov/data/a": "2"}}, "admin", ok)
		if err != nil {
			t.Fatal(err)
		}
		next := *ro
		next.State, next.Released = coreapi.RolloutDone, 1
		done, released, err := s.StepRollout(store.RolloutStep{Next: &next, IfRev: ro.Rev, Release: serials, Actor: "core", Action: "rollout done"})
		if err != nil || len(released) != 3 || done.State != coreapi.RolloutDone {
			t.Fatalf("done %+v %v %v", done, released, err)
		}
		g, err := s.Group("default")
		if err != nil || g.Rollout != 0 {
			t.Fatalf("group after done %+v %v", g, err)
		}
		for _, serial := range serials {
			if v, err := s.Device(serial); err != nil || v.Held || v.Generation() != 2 {
				t.Fatalf("%s after done %+v %v", serial, v, err)
			}
		}
		if _, err := s.SetGroupData("default", 1, store.Change{Set: map[string]string{"/etc/prov/data/a": "3"}}, "admin", ok); err != nil {
			t.Fatalf("a plain change after a finished rollout: %v", err)
		}
	})
}
