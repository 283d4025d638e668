// Package untrusted is how input from outside appears in error messages,
// records and logs: cut short, so that a hostile value cannot flood them.
// Callers quote it (%q), which escapes the rest. Standard library only: the
// contracts and the device link it.
package untrusted

import "unicode/utf8"

// MaxShown is how many bytes of an untrusted value a message shows.
const MaxShown = 64

// Short is s cut to at most MaxShown bytes, on a rune boundary when s is
// valid UTF-8, with "..." when it was cut.
func Short(s string) string {
	if len(s) <= MaxShown {
		return s
	}
	cut := MaxShown
	for cut > MaxShown-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// BadChar is the position of the first character of s that ok refuses,
// counted from 1 in characters (runes, the unit a message about it
// states), or 0 if ok accepts them all. A byte that is not UTF-8 is one
// character, utf8.RuneError, which ok should refuse.
func BadChar(s string, ok func(rune) bool) int {
	i := 0
	for _, c := range s {
		i++
		if !ok(c) {
			return i
		}
	}
	return 0
}
