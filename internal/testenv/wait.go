package testenv

import (
	"errors"
	"fmt"
	"time"
)

// The pause between two tries of a condition starts short, so a condition
// that holds almost at once costs little, and grows to a cap that keeps a
// long wait from spinning while still noticing the change within 50 ms.
const (
	firstPause = 5 * time.Millisecond
	maxPause   = 50 * time.Millisecond
)

// WaitFor tries cond until it returns nil or maxWait has passed, pausing a
// little longer after each failure (5 ms, doubling up to 50 ms). cond runs
// at least once. On timeout the error wraps ErrTimedOut and the last error
// cond returned, so a failure says what was still wrong; an error marked
// with Final ends the wait at once and is returned as it is.
//
// It is the one way tests here wait for something to happen, in the spirit
// of tailscale's tstest.WaitFor: wait on the condition, never on the time.
func WaitFor(maxWait time.Duration, cond func() error) error {
	deadline := time.Now().Add(maxWait)
	pause := firstPause
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var final *finalError
		if errors.As(err, &final) {
			return final.err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%w after %s: %w", ErrTimedOut, maxWait, err)
		}
		time.Sleep(min(pause, left)) // the backoff between tries, not a wait for an event
		pause = min(2*pause, maxPause)
	}
}

// Final marks err as one that waiting longer cannot cure (the process
// being waited on has exited, say): WaitFor returns it at once. Final(nil)
// is nil.
func Final(err error) error {
	if err == nil {
		return nil
	}
	return &finalError{err: err}
}

type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }
