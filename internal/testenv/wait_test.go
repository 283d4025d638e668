package testenv_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
)

func TestWaitForHolds(t *testing.T) {
	tries := 0
	err := testenv.WaitFor(5*time.Second, func() error {
		tries++
		if tries < 3 {
			return fmt.Errorf("try %d: not yet", tries)
		}
		return nil
	})
	if err != nil || tries != 3 {
		t.Fatalf("WaitFor: %v after %d tries, want nil after 3", err, tries)
	}
}

// On timeout the error says what was still wrong: the last error, not the
// first, and matchable as both ErrTimedOut and the condition's own error.
func TestWaitForTimeoutReportsTheLastError(t *testing.T) {
	errNotYet := errors.New("not yet")
	tries := 0
	start := time.Now()
	err := testenv.WaitFor(100*time.Millisecond, func() error {
		tries++
		return fmt.Errorf("try %d: %w", tries, errNotYet)
	})
	if !errors.Is(err, testenv.ErrTimedOut) || !errors.Is(err, errNotYet) {
		t.Fatalf("WaitFor: %v; want ErrTimedOut wrapping the condition's error", err)
	}
	if want := fmt.Sprintf("try %d:", tries); tries < 2 || !strings.Contains(err.Error(), want) {
		t.Fatalf("WaitFor: %v after %d tries; want the last error (%q)", err, tries, want)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Fatalf("gave up after %s, before the deadline", took)
	}
}

// A condition runs at least once, even with no time to wait.
func TestWaitForTriesOnce(t *testing.T) {
	tries := 0
	if err := testenv.WaitFor(0, func() error { tries++; return nil }); err != nil || tries != 1 {
		t.Fatalf("WaitFor(0): %v after %d tries", err, tries)
	}
	errNo := errors.New("no")
	if err := testenv.WaitFor(0, func() error { return errNo }); !errors.Is(err, errNo) || !errors.Is(err, testenv.ErrTimedOut) {
		t.Fatalf("WaitFor(0) of a failing condition: %v", err)
	}
}

// A Final error ends the wait at once and comes back unwrapped.
func TestWaitForFinal(t *testing.T) {
	errExited := errors.New("exited")
	tries := 0
	start := time.Now()
	err := testenv.WaitFor(time.Minute, func() error {
		tries++
		if tries == 2 {
			return testenv.Final(fmt.Errorf("the server: %w", errExited))
		}
		return errors.New("not yet")
	})
	if !errors.Is(err, errExited) || errors.Is(err, testenv.ErrTimedOut) || err.Error() != "the server: exited" || tries != 2 {
		t.Fatalf("WaitFor: %v after %d tries; want the final error after 2", err, tries)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("a final error took %s to end the wait", took)
	}
	if testenv.Final(nil) != nil {
		t.Fatal("Final(nil) is not nil")
	}
}
