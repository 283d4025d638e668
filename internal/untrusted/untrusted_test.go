package untrusted_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/fleetprov/prov/internal/untrusted"
)

func TestShort(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"rpi4", "rpi4"},
		{strings.Repeat("a", untrusted.MaxShown), strings.Repeat("a", untrusted.MaxShown)},
		{strings.Repeat("a", untrusted.MaxShown+1), strings.Repeat("a", untrusted.MaxShown) + "..."},
		// A cut inside a rune moves back to its start.
		{strings.Repeat("a", untrusted.MaxShown-1) + "١٢٣", strings.Repeat("a", untrusted.MaxShown-1) + "..."},
	} {
		got := untrusted.Short(tc.in)
		if got != tc.want {
			t.Errorf("Short(%.20q...) = %q, want %q", tc.in, got, tc.want)
		}
		if utf8.ValidString(tc.in) && !utf8.ValidString(got) {
			t.Errorf("Short(%q) cut a rune: %q", tc.in, got)
		}
	}
}
