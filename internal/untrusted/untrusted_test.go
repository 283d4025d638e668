package untrusted_test

import (
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/fleetprov/prov/internal/untrusted"
)

var (
	a63  = strings.Repeat("a", untrusted.MaxShown-1)
	ki   = "\u0915\u093f" // DEVANAGARI KA + VOWEL SIGN I: one character, two runes, 6 bytes
	deva = strings.Repeat(ki, 20)
)

func TestShort(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", ""},
		{"short", "rpi4", "rpi4"},
		{"at the limit", strings.Repeat("a", untrusted.MaxShown), strings.Repeat("a", untrusted.MaxShown)},
		{"one over", strings.Repeat("a", untrusted.MaxShown+1), strings.Repeat("a", untrusted.MaxShown) + "..."},
		// A cut inside a rune moves back to its start.
		{"inside a rune", a63 + "١٢٣", a63 + "..."},
		// A cut between a letter and its vowel sign (at byte 64) moves back
		// before the letter: 10 characters, not 10 and a bare KA.
		{"between a letter and its mark", "a" + deva, "a" + strings.Repeat(ki, 10) + "..."},
		// Bytes that are not UTF-8 are escaped, whole; the result is valid.
		{"invalid UTF-8", "1813BBBK\xff\xfe", `1813BBBK\xff\xfe`},
		{"invalid UTF-8, cut", strings.Repeat("\x80", 70), strings.Repeat(`\x80`, untrusted.MaxShown) + "..."},
		{"a truncated rune at the end", "ab\xe0\xa4", `ab\xe0\xa4`},
		// Piled marks: the cut falls between runes, something is shown.
		{"piled marks", "a" + strings.Repeat("\u0301", 40), "a" + strings.Repeat("\u0301", 31) + "..."},
		// A zero-width joiner holds what follows to what precedes it.
		{"joined", a63[:58] + "\U0001F469\u200d\U0001F4BB", a63[:58] + "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := untrusted.Short(tc.in)
			if got != tc.want {
				t.Errorf("Short(%.20q...) = %q, want %q", tc.in, got, tc.want)
			}
			if !utf8.ValidString(got) {
				t.Errorf("Short(%q) = %q: not UTF-8", tc.in, got)
			}
		})
	}
}

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"rpi4", `"rpi4"`},
		{"1813BBBK\r\n\xff", `"1813BBBK\r\n\xff"`},
		{strings.Repeat("a", untrusted.MaxShown+1), `"` + strings.Repeat("a", untrusted.MaxShown) + `"...`},
		{"a" + deva, strconv.Quote("a"+strings.Repeat(ki, 10)) + "..."},
	} {
		if got := untrusted.Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%.20q...) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestBadChar(t *testing.T) {
	hex := func(c rune) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"", 0}, {"0a1b", 0}, {"0ag", 3}, {"\u0967abc", 1}, {"ab\xffc", 3}, {"\u0967\u0967", 1},
	} {
		if got := untrusted.BadChar(tc.in, hex); got != tc.want {
			t.Errorf("BadChar(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// FuzzShort: for any input, Quote is a Go string literal of a prefix of
// it, of at most MaxShown bytes, that ends between two characters (never
// in a rune, never before a mark, unless the marks are piled), with "..."
// exactly when the input was longer; Short is valid UTF-8 and shows the
// same prefix, escaped where it is not UTF-8.
func FuzzShort(f *testing.F) {
	for _, s := range []string{"", "rpi4", a63 + "١٢٣", "abcd" + deva, "1813BBBK\xff\xfe", "a" + deva, strings.Repeat("\x80", 70),
		"a" + strings.Repeat("\u0301", 40), a63[:58] + "\U0001F469\u200d\U0001F4BB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q := untrusted.Quote(s)
		lit, dots := strings.CutSuffix(q, "...")
		if dots != (len(s) > untrusted.MaxShown) {
			t.Fatalf("Quote(%q) = %s: cut %v for %d bytes", s, q, dots, len(s))
		}
		p, err := strconv.Unquote(lit)
		if err != nil {
			t.Fatalf("Quote(%q) = %s: %v", s, q, err)
		}
		if !strings.HasPrefix(s, p) || len(p) > untrusted.MaxShown || !utf8.ValidString(q) {
			t.Fatalf("Quote(%q) = %s: not a valid prefix of at most %d bytes", s, q, untrusted.MaxShown)
		}
		if dots {
			next, _ := utf8.DecodeRuneInString(s[len(p):])
			if utf8.ValidString(s) && !utf8.ValidString(p) {
				t.Fatalf("Quote(%q) = %s: cut a rune", s, q)
			}
			if attached(next) && lastBase(p) >= untrusted.MaxShown/2 {
				t.Fatalf("Quote(%q) = %s: cut before a mark or in a joined character, with a boundary at %d", s, q, lastBase(p))
			}
		}
		short := untrusted.Short(s)
		if !utf8.ValidString(short) {
			t.Fatalf("Short(%q) = %q: not UTF-8", s, short)
		}
		if utf8.ValidString(p) && short != p+map[bool]string{true: "...", false: ""}[dots] {
			t.Fatalf("Short(%q) = %q, Quote %s", s, short, q)
		}
	})
}

func attached(r rune) bool { return r == '\u200d' || unicode.Is(unicode.M, r) }

// lastBase is where the last character of p starts that a cut could be
// made before: a rune that is not attached to the one before it; -1 if
// none.
func lastBase(p string) int {
	last, joined := -1, false
	for i, r := range p {
		if !joined && !attached(r) {
			last = i
		}
		joined = r == '\u200d'
	}
	return last
}
