package signedimage

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzParseObject: the strict JSON reader (it reads the header before any
// signature is checked) never panics, and accepts only what is valid JSON,
// one object, without a backslash, and whose top-level names are distinct
// and exactly the names encoding/json sees.
func FuzzParseObject(f *testing.F) {
	for _, s := range []string{
		`{"alg":"EdDSA","typ":"prov-image+jws","x5c":["MIIB"]}`,
		`{"alg":"none","alg":"EdDSA"}`, `{"ALG":"EdDSA"}`, `{"a":{"b":1,"b":2}}`, `{"a":[1,2.5,-3e4,true,null]}`,
		`{"a":"\u0041"}`, `{} {}`, `[1]`, `{"generation":NaN}`, " {\n} ",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseObject(b)
		if err != nil {
			return
		}
		if !json.Valid(b) || bytes.IndexByte(b, '\\') >= 0 {
			t.Fatalf("accepted %q", b)
		}
		var loose map[string]json.RawMessage
		if err := json.Unmarshal(b, &loose); err != nil || len(loose) != len(m) {
			t.Fatalf("accepted %q: encoding/json reads %d members (%v), the strict reader %d", b, len(loose), err, len(m))
		}
		for name := range m {
			if _, ok := loose[name]; !ok {
				t.Fatalf("accepted %q: member %q", b, name)
			}
		}
	})
}

func TestParseObjectRefuses(t *testing.T) {
	for _, s := range []string{
		`{"alg":"none","alg":"EdDSA"}`, `{"a":{"b":1,"b":2}}`, `{"a":"\u0041"}`, `{} {}`, `[1]`, `{"generation":NaN}`,
		"{\"a\":\"\xff\"}", `{"a":1`, ``, `null`,
	} {
		if _, err := parseObject([]byte(s)); err == nil {
			t.Errorf("accepted %q", s)
		}
	}
	m, err := parseObject([]byte(` {"a" : 1, "A": "x", "b":[true,null]} `))
	if err != nil || len(m) != 3 || m["a"].kind != kindNumber || m["A"].kind != kindString || len(m["b"].items) != 2 {
		t.Fatalf("%v %v", m, err)
	}
}
