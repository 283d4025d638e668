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
