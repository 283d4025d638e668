package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/fleetprov/prov/pki"
)

// floorRecord is floor.json.
type floorRecord struct {
	Floor time.Time `json:"floor"`
}

// Floor reads the persisted clock floor: zero if there is none yet,
// ErrCorruptFloor if the file cannot be read as one.
func (d *Dir) Floor() (time.Time, error) {
	var r floorRecord
	err := d.readJSON(FloorFile, &r)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, fmt.Errorf("%w: %w", ErrCorruptFloor, err)
	}
	return r.Floor, nil
}

// RaiseFloor writes t as the clock floor unless the stored one is as late;
// it never lowers it, and replaces a corrupt file. It does not take Lock:
// a bundle's signer raises the floor while Install holds it. An flock on
// the directory itself keeps two processes from each reading the old
// value and the lower of two raises landing last.
func (d *Dir) RaiseFloor(t time.Time) error {
	dir, err := os.Open(d.Path)
	if err != nil {
		return fmt.Errorf("raise the clock floor: %w", err)
	}
	// Closing the directory releases the flock.
	defer func() { _ = dir.Close() }()
	if err := syscall.Flock(int(dir.Fd()), syscall.LOCK_EX); err != nil { //nolint:gosec // fd fits
		return fmt.Errorf("raise the clock floor: %w", err)
	}
	if old, err := d.Floor(); err == nil && !t.After(old) {
		return nil
	}
	if err := d.writeJSON(FloorFile, floorRecord{Floor: t.UTC()}, 0o644); err != nil {
		return fmt.Errorf("raise the clock floor: %w", err)
	}
	return nil
}

// ClockFloor is the device's clock floor: the latest of base (the
// binary's build time), the high-water mark's issue time and the persisted
// floor. Raising it (a verified chain, an accepted bundle) writes
// floor.json. report, if not nil, hears of what could not be read (the
// floor then holds every source that could) and of raises that could not
// be written (the floor stays raised in memory); neither stops the device.
func (d *Dir) ClockFloor(base time.Time, report func(error)) *pki.Floor {
	if report == nil {
		report = func(error) {}
	}
	floor := base
	if hw, err := d.HighWater(); err != nil {
		report(err)
	} else if hw.IssuedAt.After(floor) {
		floor = hw.IssuedAt
	}
	if t, err := d.Floor(); err != nil {
		report(err)
	} else if t.After(floor) {
		floor = t
	}
	return pki.NewFloor(floor, func(t time.Time) error {
		err := d.RaiseFloor(t)
		if err != nil {
			report(err)
		}
		return err
	})
}
