package cli

import (
	"testing"
	"time"
)

// SetClock makes verify and inspect check at c until the test ends.
func SetClock(t testing.TB, c func() time.Time) {
	old := clock
	clock = c
	t.Cleanup(func() { clock = old })
}
