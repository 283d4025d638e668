package state

import "errors"

// Errors a caller tells apart, matched with errors.Is.
var (
	// ErrNotEnrolled is a state directory without an enrollment.
	ErrNotEnrolled = errors.New("not enrolled")
	// ErrIDChanged is a board whose hardware ID is not the one it enrolled
	// with: typically an SD card moved to another board (its u-boot
	// environment may even carry the old board's serial). The old identity
	// must not be used.
	ErrIDChanged = errors.New("hardware ID changed since enrollment")
	// ErrCorruptFloor is a floor file that cannot be read. It is reported,
	// not fatal: the floor's other sources still count, and the next raise
	// writes the file afresh.
	ErrCorruptFloor = errors.New("clock floor file unreadable")
)
