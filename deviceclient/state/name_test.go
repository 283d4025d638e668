package state_test

import (
	"testing"

	"github.com/fleetprov/prov/deviceclient/state"
)

// An image's name says its version, which the agent's If-None-Match is
// made of; a name ImageName did not make says nothing.
func TestImageNameVersion(t *testing.T) {
	const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	name := state.ImageName(42, sha)
	if gen, sha16, ok := (state.Image{Name: name}).Version(); !ok || gen != 42 || sha16 != sha[:16] {
		t.Errorf("%s: %d %q %v", name, gen, sha16, ok)
	}
	for _, bad := range []string{"", "x.bundle", "42-0123456789abcdef.bundle", "00000000000000000042-0123456789ABCDEF.bundle",
		"00000000000000000042-0123456789abcde.bundle", "0000000000000000004x-0123456789abcdef.bundle", "99999999999999999999-0123456789abcdef.bundle"} {
		if _, _, ok := (state.Image{Name: bad}).Version(); ok {
			t.Errorf("%q: a version", bad)
		}
	}
}
