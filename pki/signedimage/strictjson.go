package signedimage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"

	"github.com/fleetprov/prov/internal/untrusted"
)

// maxInteger is the largest integer a statement may hold: 2^53 - 1, the
// largest every JSON reader represents exactly (RFC 7493, I-JSON).
const maxInteger = 1<<53 - 1

// jsonKind is the JSON type of a member's value.
type jsonKind int

const (
	kindString jsonKind = iota + 1
	kindNumber
	kindBool
	kindNull
	kindArray
	kindObject
)

func (k jsonKind) String() string {
	return [...]string{"?", "string", "number", "boolean", "null", "array", "object"}[k]
}

// jsonValue is a member's value as written: strings decoded (they hold no
// escapes), numbers as their text, arrays as their elements.
type jsonValue struct {
	kind  jsonKind
	text  string // a string's value, a number's spelling
	items []jsonValue
}

// parseObject reads a JSON text by the rules of docs/image-format.md,
// section 2, "JSON": UTF-8, no backslash anywhere (no member or value of a
// statement needs an escape, so each has one spelling), one object at the
// top, no object at any depth with two members of one name (names
// compared byte for byte, so case matters), nothing after it. It returns
// the top-level members. encoding/json alone would match names without
// regard to case and keep the last of duplicates.
func parseObject(b []byte) (map[string]jsonValue, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("not UTF-8")
	}
	if i := bytes.IndexByte(b, '\\'); i >= 0 {
		return nil, fmt.Errorf("a backslash at byte %d: escapes are not allowed", i)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	v, err := readObject(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("data after the JSON object")
	}
	members := make(map[string]jsonValue, len(v))
	for _, m := range v {
		members[m.name] = m.value
	}
	return members, nil
}

type jsonMember struct {
	name  string
	value jsonValue
}

// readObject reads the members of an object whose '{' was read.
func readObject(dec *json.Decoder) ([]jsonMember, error) {
	var out []jsonMember
	seen := map[string]bool{}
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not JSON: %w", err)
		}
		if d, ok := tok.(json.Delim); ok && d == '}' {
			return out, nil
		}
		name, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("not JSON: a member name is %v", tok)
		}
		if seen[name] {
			return nil, fmt.Errorf("member %q appears twice", name)
		}
		seen[name] = true
		v, err := readValue(dec)
		if err != nil {
			return nil, err
		}
		out = append(out, jsonMember{name, v})
	}
}

func readValue(dec *json.Decoder) (jsonValue, error) {
	tok, err := dec.Token()
	if err != nil {
		return jsonValue{}, fmt.Errorf("not JSON: %w", err)
	}
	switch t := tok.(type) {
	case string:
		return jsonValue{kind: kindString, text: t}, nil
	case json.Number:
		return jsonValue{kind: kindNumber, text: string(t)}, nil
	case bool:
		return jsonValue{kind: kindBool}, nil
	case nil:
		return jsonValue{kind: kindNull}, nil
	case json.Delim:
		switch t {
		case '{':
			if _, err := readObject(dec); err != nil {
				return jsonValue{}, err
			}
			return jsonValue{kind: kindObject}, nil
		case '[':
			v := jsonValue{kind: kindArray}
			for dec.More() {
				item, err := readValue(dec)
				if err != nil {
					return jsonValue{}, err
				}
				v.items = append(v.items, item)
			}
			if _, err := dec.Token(); err != nil { // ']'
				return jsonValue{}, fmt.Errorf("not JSON: %w", err)
			}
			return v, nil
		}
	}
	return jsonValue{}, fmt.Errorf("not JSON: unexpected %v", tok)
}

// members checks that m has exactly the members named in want, each of the
// kind given.
func members(m map[string]jsonValue, want map[string]jsonKind) error {
	for name, v := range m {
		k, ok := want[name]
		if !ok {
			return fmt.Errorf("unknown member %q", untrusted.Short(name))
		}
		if v.kind != k {
			return fmt.Errorf("member %q is a JSON %s, not a %s", name, v.kind, k)
		}
	}
	for name := range want {
		if _, ok := m[name]; !ok {
			return fmt.Errorf("member %q is missing", name)
		}
	}
	return nil
}

// integer reads a number that is a JSON integer in 0..2^53-1, spelt with
// digits only (no sign, fraction or exponent).
func integer(v jsonValue) (uint64, bool) {
	if v.kind != kindNumber || v.text == "" || len(v.text) > 16 {
		return 0, false
	}
	for i := 0; i < len(v.text); i++ {
		if v.text[i] < '0' || v.text[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(v.text, 10, 64)
	if err != nil || n > maxInteger {
		return 0, false
	}
	return n, true
}
