package enroll

import "testing"

// The device reads the one error shape of both services, and for one
// release the proxies' older one, whose text was "reason".
func TestRefusalShapes(t *testing.T) {
	for _, tc := range []struct {
		body, code, msg string
		ok              bool
	}{
		{`{"error":"refused_quota","message":"batch b1 has used its quota"}`, "refused_quota", "batch b1 has used its quota", true},
		{`{"error":"refused_quota","reason":"batch b1 has used its quota"}`, "refused_quota", "batch b1 has used its quota", true},
		{`{"error":"upstream","message":"new","reason":"old"}`, "upstream", "new", true},
		{`{"message":"no code"}`, "", "", false},
		{`<html>502 Bad Gateway</html>`, "", "", false},
	} {
		e, ok := refusal([]byte(tc.body))
		if ok != tc.ok || string(e.Code) != tc.code || e.Message != tc.msg {
			t.Errorf("%s: %+v %v", tc.body, e, ok)
		}
	}
}
