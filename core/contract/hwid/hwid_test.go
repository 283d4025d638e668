package hwid_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/contract/hwid"
)

func TestSerials(t *testing.T) {
	// Pinned: the rule is versioned; these must never change within v1.
	for _, tc := range []struct{ board, raw, serial string }{
		{"rpi4", "10000000abcdef12", "6fd5ce8f6a"},
		{"rpi4", "10000000ABCDEF12\x00", "6fd5ce8f6a"}, // devicetree form, upper case: the same device
		{"bbb", "1813BBBK0123", "39bf538987"},
		{"bbb", "1813bbbk0123\x00", "39bf538987"},
		{"bbai", "1813BBBK0123", "5fccfaf038"}, // another board type: another device
	} {
		id, err := hwid.Parse(tc.board, tc.raw)
		if err != nil {
			t.Fatalf("Parse(%q, %q): %v", tc.board, tc.raw, err)
		}
		if got := id.Serial(); got != tc.serial {
			t.Errorf("serial of %s %q = %s, pinned %s", tc.board, tc.raw, got, tc.serial)
		}
	}
}

func TestHostileIDs(t *testing.T) {
	for _, tc := range []struct {
		name, board, raw string
		err              error
	}{
		{"unknown board", "rpi5", "10000000abcdef12", hwid.ErrBadBoard},
		{"board with a slash", "../rpi4", "10000000abcdef12", hwid.ErrBadBoard},
		{"empty", "rpi4", "", hwid.ErrBadHardwareID},
		{"only NUL", "rpi4", "\x00", hwid.ErrBadHardwareID},
		{"two NULs", "rpi4", "10000000abcdef12\x00\x00", hwid.ErrBadHardwareID},
		{"NUL inside", "rpi4", "10000000\x00bcdef12", hwid.ErrBadHardwareID},
		{"huge", "rpi4", strings.Repeat("a", 10000), hwid.ErrBadHardwareID},
		{"too short", "rpi4", "abcdef12", hwid.ErrBadHardwareID},
		{"newline", "rpi4", "10000000abcdef12\n", hwid.ErrBadHardwareID},
		{"CR LF", "bbb", "1813BBBK\r\n0123", hwid.ErrBadHardwareID},
		{"space", "bbb", "1813 BBBK0123", hwid.ErrBadHardwareID},
		{"slash", "bbb", "1813/BBBK0123", hwid.ErrBadHardwareID},
		{"dot dot", "bbb", "../../etc/passwd", hwid.ErrBadHardwareID},
		{"percent-encoded dot", "bbb", "%2e%2eBBBK0123", hwid.ErrBadHardwareID},
		{"plus", "bbb", "1813+BBBK0123", hwid.ErrBadHardwareID},
		{"hash", "bbb", "1813#BBBK0123", hwid.ErrBadHardwareID},
		{"star", "bbb", "1813*BBBK0123", hwid.ErrBadHardwareID},
		{"MQTT wildcard", "bbb", "1813+/#BBBK", hwid.ErrBadHardwareID},
		{"full-width digits", "rpi4", "１0000000abcdef1", hwid.ErrBadHardwareID},
		{"arabic-indic digits", "rpi4", "١٠٠٠٠٠٠٠abcdef12", hwid.ErrBadHardwareID},
		{"right-to-left mark", "bbb", "1813BBBK\u200f0123", hwid.ErrBadHardwareID},
		{"non-hex for rpi4", "rpi4", "10000000abcdefgh", hwid.ErrBadHardwareID},
		{"invalid UTF-8", "bbb", "1813BBBK\xff\xfe", hwid.ErrBadHardwareID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hwid.Parse(tc.board, tc.raw)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Parse: %v; want %v", err, tc.err)
			}
		})
	}
}

// A refusal states a length in the unit it counts: characters counted as
// characters (16 Devanagari digits are 16, not the 48 bytes they take), or
// bytes, said as bytes; and the limit in that same unit.
func TestLengthUnits(t *testing.T) {
	deva := func(n int) string { return strings.Repeat("\u0967", n) } // DEVANAGARI DIGIT ONE, 3 bytes
	for _, tc := range []struct {
		name, board, raw string
		want             string
	}{
		{"10 Devanagari digits for rpi4", "rpi4", deva(10), "10 characters, want 16 hex digits"},
		{"16 Devanagari digits for rpi4", "rpi4", deva(16), "character 1 is not a hex digit"},
		{"5 Devanagari digits for bbb", "bbb", deva(5), "5 characters, want 8 to 32"},
		{"ASCII then a Devanagari digit", "bbb", "1813BBBK" + deva(1), "character 9 is not A-Z or 0-9"},
		{"a byte that is not UTF-8 is a character", "rpi4", "10000000abcdef\xff", "15 characters, want 16 hex digits"},
		{"over the raw limit, in bytes", "bbb", deva(22), "66 bytes, at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hwid.Parse(tc.board, tc.raw)
			if !errors.Is(err, hwid.ErrBadHardwareID) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse: %v; want %q", err, tc.want)
			}
		})
	}
}

var serialRE = regexp.MustCompile(`^[0-9a-f]{10}$`)

// FuzzParse: no panic; what is accepted has a printable canonical form and
// a well-formed serial, and parses again to itself.
func FuzzParse(f *testing.F) {
	f.Add("rpi4", "10000000abcdef12")
	f.Add("bbb", "1813BBBK0123\x00")
	f.Add("bbai", "%2e%2e/")
	f.Fuzz(func(t *testing.T, board, raw string) {
		id, err := hwid.Parse(board, raw)
		if err != nil {
			return
		}
		if !serialRE.MatchString(id.Serial()) {
			t.Fatalf("serial %q", id.Serial())
		}
		for _, c := range id.Canonical {
			if (c < '0' || c > '9') && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
				t.Fatalf("canonical %q has %q", id.Canonical, c)
			}
		}
		again, err := hwid.Parse(board, id.Canonical)
		if err != nil || again != id {
			t.Fatalf("canonical form does not parse to itself: %v %v", again, err)
		}
	})
}
