package httpapi

import (
	"net/http"
	"strings"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// Conditional requests (RFC 9110 §13), one parser for both services.
//
// A handler that knows its current representation's entity tag calls
// Preconditions before it acts; it answers 304 or 412, or goes on. Only
// entity tags are used: neither service sends Last-Modified, so
// If-Modified-Since and If-Unmodified-Since are ignored, as §13.1.3 and
// §13.1.4 say a server without a modification date must.

// entityTag is one parsed entity-tag: opaque is the quoted string with its
// quotes, as it appears on the wire.
type entityTag struct {
	weak   bool
	opaque string
}

// conditionList is a parsed If-Match or If-None-Match: "*" or a list of
// entity tags (§13.1.1, §13.1.2).
type conditionList struct {
	any  bool
	tags []entityTag
}

// parseConditionList reads every field line of header h: "*" alone, or
// a comma-separated list of entity tags, each [W/]"etagc*" (§8.8.3;
// etagc is any visible ASCII but '"', or obs-text, so a comma may sit
// inside a tag and the list is split outside quotes only). Empty list
// elements are accepted (§5.6.1). ok is false when the header is absent.
func parseConditionList(r *http.Request, h string) (conditionList, bool, error) {
	lines := r.Header.Values(h)
	if len(lines) == 0 {
		return conditionList{}, false, nil
	}
	bad := BadRequest(h+`: want * or a comma-separated list of entity tags ("…" or W/"…"; RFC 9110 §8.8.3)`, nil)
	joined := strings.Join(lines, ",")
	if strings.TrimSpace(joined) == "*" {
		return conditionList{any: true}, true, nil
	}
	var c conditionList
	s := joined
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		if s[0] == ',' {
			s = s[1:]
			continue
		}
		var t entityTag
		if strings.HasPrefix(s, "W/") {
			t.weak, s = true, s[2:]
		}
		if s == "" || s[0] != '"' {
			return c, true, bad
		}
		end := 1
		for end < len(s) && s[end] != '"' {
			if b := s[end]; b < 0x21 || b == 0x7f {
				return c, true, bad // a control character, space or DEL
			}
			end++
		}
		if end == len(s) {
			return c, true, bad // no closing quote
		}
		t.opaque, s = s[:end+1], strings.TrimLeft(s[end+1:], " \t")
		if s != "" && s[0] != ',' {
			return c, true, bad
		}
		c.tags = append(c.tags, t)
	}
	if len(c.tags) == 0 {
		return c, true, bad
	}
	return c, true, nil
}

// parseTag reads an entity tag this server made (current).
func parseTag(s string) entityTag {
	if strings.HasPrefix(s, "W/") {
		return entityTag{weak: true, opaque: s[2:]}
	}
	return entityTag{opaque: s}
}

// strongMatch is §8.8.3.2's strong comparison: neither tag weak, the
// opaque tags equal.
func strongMatch(a, b entityTag) bool { return !a.weak && !b.weak && a.opaque == b.opaque }

// weakMatch is the weak comparison: the opaque tags equal.
func weakMatch(a, b entityTag) bool { return a.opaque == b.opaque }

// matches says whether the list matches any of the current tags by cmp;
// "*" matches when there is a current representation at all.
func (c conditionList) matches(current []string, cmp func(a, b entityTag) bool) bool {
	if c.any {
		return len(current) > 0
	}
	for _, t := range c.tags {
		for _, cur := range current {
			if cmp(t, parseTag(cur)) {
				return true
			}
		}
	}
	return false
}

// Precondition answers of Preconditions.
const (
	// Proceed: no condition, or every condition holds.
	Proceed = iota
	// NotModified: answer 304 (a GET or HEAD whose If-None-Match matched).
	NotModified
)

// Preconditions evaluates If-Match and If-None-Match in RFC 9110
// §13.2.2's order against the entity tags of the target's current
// representation (none: there is no current representation; more than
// one: the resource answers to several spellings of the same version).
// It returns Proceed, or NotModified for a GET or HEAD whose
// If-None-Match matched (weak comparison); a false If-Match (strong
// comparison) or a matching If-None-Match on any other method is a 412
// version_conflict, and a malformed field a 400 naming it.
//
// A handler calls it only once the request would otherwise succeed
// (§13.2.1: a 404 or 403 comes first).
func Preconditions(r *http.Request, current ...string) (int, error) {
	im, ok, err := parseConditionList(r, "If-Match")
	if err != nil {
		return 0, err
	}
	if ok && !im.matches(current, strongMatch) {
		return 0, NewError(http.StatusPreconditionFailed, coreapi.CodeVersionConflict,
			"If-Match: the current version is "+describe(current)+"; read it again and retry", nil)
	}
	inm, ok, err := parseConditionList(r, "If-None-Match")
	if err != nil {
		return 0, err
	}
	if ok && inm.matches(current, weakMatch) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			return NotModified, nil
		}
		return 0, NewError(http.StatusPreconditionFailed, coreapi.CodeVersionConflict,
			"If-None-Match: the current version is "+describe(current), nil)
	}
	return Proceed, nil
}

// describe names the current tags in a 412's message.
func describe(current []string) string {
	if len(current) == 0 {
		return "none (nothing is there)"
	}
	return strings.Join(current, " or ")
}

// WriteNotModified answers 304: the headers the handler set (ETag,
// Cache-Control, …) and no body (§15.4.5).
func WriteNotModified(w http.ResponseWriter) {
	w.WriteHeader(http.StatusNotModified)
}
