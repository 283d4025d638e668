package state_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/fleetprov/prov/deviceclient/state"
)

func open(t *testing.T) *state.Dir {
	t.Helper()
	st, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// The clock floor is the latest of the build time, the high-water mark's
// issue time and the floor file; raising it writes the file, which never
// goes down.
func TestClockFloor(t *testing.T) {
	st := open(t)
	build := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if f, err := st.Floor(); err != nil || !f.IsZero() {
		t.Fatalf("no floor file: %v %v", f, err)
	}
	if got := st.ClockFloor(build, nil).Time(); !got.Equal(build) {
		t.Fatalf("a new board's floor %v; want its build time %v", got, build)
	}
	issued := build.Add(24 * time.Hour)
	if err := st.RaiseHighWater(state.HighWater{Generation: 1, IssuedAt: issued}); err != nil {
		t.Fatal(err)
	}
	floor := st.ClockFloor(build, nil)
	if !floor.Time().Equal(issued) {
		t.Fatalf("floor %v; want the accepted bundle's issue time %v", floor.Time(), issued)
	}
	proved := issued.Add(time.Hour)
	if err := floor.Raise(proved); err != nil {
		t.Fatal(err)
	}
	if err := floor.Raise(issued); err != nil { // lower: nothing written
		t.Fatal(err)
	}
	if f, err := st.Floor(); err != nil || !f.Equal(proved) {
		t.Fatalf("floor file %v %v; want %v", f, err, proved)
	}
	// Another process with an older view does not lower the file.
	if err := st.RaiseFloor(issued); err != nil {
		t.Fatal(err)
	}
	if f, _ := st.Floor(); !f.Equal(proved) {
		t.Fatalf("floor file lowered to %v", f)
	}
	// A restart starts from the file.
	if got := st.ClockFloor(build, nil).Time(); !got.Equal(proved) {
		t.Fatalf("after a restart the floor is %v; want %v", got, proved)
	}
}

// A corrupt floor file is reported, not fatal: the other sources count,
// and the next raise writes it afresh. A raise that cannot be written is
// reported and kept in memory.
func TestCorruptFloorFile(t *testing.T) {
	st := open(t)
	build := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	if err := st.WriteFile(state.FloorFile, []byte("{\"floor\": \"yesterday\""), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Floor(); !errors.Is(err, state.ErrCorruptFloor) {
		t.Fatalf("Floor of a corrupt file: %v", err)
	}
	var reported []error
	floor := st.ClockFloor(build, func(err error) { reported = append(reported, err) })
	if !floor.Time().Equal(build) || len(reported) != 1 || !errors.Is(reported[0], state.ErrCorruptFloor) {
		t.Fatalf("floor %v, reported %v", floor.Time(), reported)
	}
	later := build.Add(time.Hour)
	if err := floor.Raise(later); err != nil {
		t.Fatal(err)
	}
	if f, err := st.Floor(); err != nil || !f.Equal(later) {
		t.Fatalf("after a raise the file holds %v %v; want %v", f, err, later)
	}
	// The file cannot be replaced (a directory stands in its way).
	if err := os.Remove(st.File(state.FloorFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(st.File(state.FloorFile), 0o700); err != nil {
		t.Fatal(err)
	}
	reported = nil
	if err := floor.Raise(later.Add(time.Hour)); err == nil || len(reported) != 1 || !floor.Time().Equal(later.Add(time.Hour)) {
		t.Fatalf("unwritable: %v, reported %v, floor %v", err, reported, floor.Time())
	}
}
