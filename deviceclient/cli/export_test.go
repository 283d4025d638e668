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

// SetBootIDFile makes the device commands read the boot ID from path
// until the test ends: a reboot is a new boot ID.
func SetBootIDFile(t testing.TB, path string) {
	old := bootIDFile
	bootIDFile = path
	t.Cleanup(func() { bootIDFile = old })
}
