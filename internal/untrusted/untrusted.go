// Package untrusted is how input from outside appears in error messages,
// records and logs: cut short, so that a hostile value cannot flood them,
// on a character boundary, so that no message holds half a character, and
// with bytes that are not UTF-8 escaped, so that a message is always valid
// UTF-8 and still shows which bytes were sent. Standard library only: the
// contracts and the device link it.
package untrusted

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxShown is how many bytes of an untrusted value a message shows.
const MaxShown = 64

// Quote is s for a message: at most MaxShown bytes of it, cut on a
// character boundary, in Go's double-quoted syntax (control characters,
// quotes and bytes that are not UTF-8 escaped: "1813BBBK\xff"), followed
// by "..." outside the quotes when it was cut.
func Quote(s string) string {
	p, cut := prefix(s)
	return strconv.Quote(p) + ellipsis(cut)
}

// Short is s where it is shown as it is, not quoted (a record's field, a
// table cell): at most MaxShown bytes of it, cut on a character boundary,
// each byte that is not UTF-8 written as its escape \xNN, and "..." when it
// was cut. The result is always valid UTF-8. In a message, use Quote.
func Short(s string) string {
	p, cut := prefix(s)
	if utf8.ValidString(p) {
		return p + ellipsis(cut)
	}
	var b strings.Builder
	for i := 0; i < len(p); {
		r, n := utf8.DecodeRuneInString(p[i:])
		if r == utf8.RuneError && n == 1 {
			const hex = "0123456789abcdef"
			b.WriteString(`\x`)
			b.WriteByte(hex[p[i]>>4])
			b.WriteByte(hex[p[i]&0xf])
		} else {
			b.WriteString(p[i : i+n])
		}
		i += n
	}
	return b.String() + ellipsis(cut)
}

func ellipsis(cut bool) string {
	if cut {
		return "..."
	}
	return ""
}

// prefix is the longest start of s of at most MaxShown bytes that ends on
// a character boundary, and whether it is shorter than s. A boundary is
// between two runes, and not before a rune that belongs to the one before
// it: a combining mark (a Devanagari vowel sign, an accent), a zero-width
// joiner or what follows one; a byte that is not UTF-8 is a character of
// its own. When a run of joined runes is longer than half the limit (text
// piled with marks) the cut falls between any two runes instead, so that
// something is shown.
func prefix(s string) (string, bool) {
	if len(s) <= MaxShown {
		return s, false
	}
	cluster, anyRune := 0, 0 // the last boundary of each kind at or before MaxShown
	joined := false          // the rune before was a zero-width joiner
	for i := 0; i <= MaxShown; {
		r, n := utf8.DecodeRuneInString(s[i:])
		anyRune = i
		if !joined && !joins(r) {
			cluster = i
		}
		joined = r == zwj
		i += n
	}
	if cluster < MaxShown/2 {
		return s[:anyRune], true
	}
	return s[:cluster], true
}

// zwj is the zero-width joiner, which joins the runes on its two sides
// into one character ("👩\u200d💻").
const zwj = '\u200d'

// joins reports whether r belongs to the rune before it: a combining mark
// or a zero-width joiner.
func joins(r rune) bool { return r == zwj || unicode.Is(unicode.M, r) }

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
