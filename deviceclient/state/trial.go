package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"
)

// Files of the health check's bookkeeping (docs/device.md, "The health
// check and the trial").
const (
	// TrialFile is the generation mounted on trial: its health check has
	// not passed yet. It survives a reboot, which is how a reboot before
	// the check passed is told (a new boot ID), as RAUC's boot counter.
	TrialFile = "trial.json"
	// HealthyFile names the last image whose health check passed (or that
	// was mounted with none configured): mounting it again needs no trial.
	HealthyFile = "healthy.json"
	// BadFile lists the generations that failed here: never installed or
	// mounted again.
	BadFile = "bad.json"
)

// MaxBad is how many bad generations are remembered: only the newest can
// be offered again (generations only go forward, and the high-water mark
// refuses anything below it), the rest are kept for `status`.
const MaxBad = 8

// Trial is a generation mounted but not yet found healthy.
type Trial struct {
	Image      string `json:"image"`
	Generation uint64 `json:"generation"`
	// BootID is the boot the image was last mounted in; Attempts counts
	// the boots it was mounted in without its check passing.
	BootID   string    `json:"bootId"`
	Attempts int       `json:"attempts"`
	Started  time.Time `json:"started"`
}

// Healthy is the last image found healthy.
type Healthy struct {
	Image      string    `json:"image"`
	Generation uint64    `json:"generation"`
	At         time.Time `json:"at"`
}

// Bad is a generation that failed its health check or its trial here.
type Bad struct {
	Generation uint64    `json:"generation"`
	Image      string    `json:"image"`
	Reason     string    `json:"reason"`
	At         time.Time `json:"at"`
}

// Trial reads the trial record; nil when no generation is on trial.
func (d *Dir) Trial() (*Trial, error) {
	var t Trial
	if err := d.readJSON(TrialFile, &t); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return &t, nil
}

// SetTrial replaces the trial record.
func (d *Dir) SetTrial(t Trial) error { return d.writeJSON(TrialFile, t, 0o644) }

// EndTrial removes the trial record.
func (d *Dir) EndTrial() error {
	if err := os.Remove(d.File(TrialFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("end the trial: %w", err)
	}
	return nil
}

// Healthy reads the last image found healthy (zero if none).
func (d *Dir) Healthy() (Healthy, error) {
	var h Healthy
	if err := d.readJSON(HealthyFile, &h); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return h, err
	}
	return h, nil
}

// SetHealthy records the image found healthy.
func (d *Dir) SetHealthy(h Healthy) error { return d.writeJSON(HealthyFile, h, 0o644) }

// BadGenerations reads the generations marked bad, oldest first.
func (d *Dir) BadGenerations() ([]Bad, error) {
	var b []Bad
	if err := d.readJSON(BadFile, &b); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return b, nil
}

// IsBad says whether generation failed here. A bad file that cannot be
// read counts as none: the device must go on working.
func (d *Dir) IsBad(generation uint64) bool {
	b, _ := d.BadGenerations()
	return slices.ContainsFunc(b, func(x Bad) bool { return x.Generation == generation })
}

// MarkBad adds b to the bad generations, keeping the newest MaxBad.
func (d *Dir) MarkBad(b Bad) error {
	list, err := d.BadGenerations()
	if err != nil {
		list = nil // rewritten afresh
	}
	list = slices.DeleteFunc(list, func(x Bad) bool { return x.Generation == b.Generation })
	list = append(list, b)
	slices.SortFunc(list, func(x, y Bad) int {
		switch {
		case x.Generation < y.Generation:
			return -1
		case x.Generation > y.Generation:
			return 1
		}
		return 0
	})
	if len(list) > MaxBad {
		list = list[len(list)-MaxBad:]
	}
	return d.writeJSON(BadFile, list, 0o644)
}

// RemovePointer unsets the current or previous pointer.
func (d *Dir) RemovePointer(which string) error {
	if err := os.Remove(d.File(which)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
