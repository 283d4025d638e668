package httpapi_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/httpapi"
)

var errDomain = errors.New("domain refusal")

func edge(log *bytes.Buffer) (*httpapi.Edge, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	e := httpapi.NewEdge(slog.New(slog.NewJSONHandler(log, nil)), reg, "test", httpapi.EdgeOptions{
		Classify: func(err error) *httpapi.Error {
			if errors.Is(err, errDomain) {
				return httpapi.NewError(http.StatusConflict, "domain", "refused by the domain", err)
			}
			return nil
		},
		LogAttrs: func(*http.Request) []any { return []any{"who", "tester"} },
	})
	return e, reg
}

func serve(h http.Handler, method, path, body string) (*httptest.ResponseRecorder, coreapi.Error) {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(body)))
	var e coreapi.Error
	_ = json.Unmarshal(w.Body.Bytes(), &e)
	return w, e
}

func TestErrorsAreOneShapeAndLoggedOnce(t *testing.T) {
	var log bytes.Buffer
	e, _ := edge(&log)
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   coreapi.ErrorCode
		msg    string
	}{
		{"typed", httpapi.NewError(http.StatusTeapot, "teapot", "short and stout", errors.New("kettle")), http.StatusTeapot, "teapot", "short and stout"},
		{"wrapped typed", errors.Join(errors.New("ctx"), httpapi.BadRequest("name: too long", nil)), 400, coreapi.CodeBadRequest, "name: too long"},
		{"classified", errDomain, http.StatusConflict, "domain", "refused by the domain"},
		{"anything else", errors.New("disk on fire at /var/lib/secret"), 500, coreapi.CodeInternal, "internal error"},
	} {
		log.Reset()
		h := e.Handle("r", func(http.ResponseWriter, *http.Request) error { return tc.err })
		w, body := serve(h, "GET", "/", "")
		if w.Code != tc.status || body.Code != tc.code || body.Message != tc.msg || w.Header().Get("Content-Type") != coreapi.MediaTypeJSON {
			t.Errorf("%s: %d %+v %v", tc.name, w.Code, body, w.Header())
		}
		if strings.Contains(w.Body.String(), "secret") || strings.Contains(w.Body.String(), "kettle") {
			t.Errorf("%s: a cause was sent: %s", tc.name, w.Body.String())
		}
		if n := strings.Count(log.String(), "request refused"); n != 1 || !strings.Contains(log.String(), `"who":"tester"`) {
			t.Errorf("%s: logged %d times: %s", tc.name, n, log.String())
		}
	}
}

func TestPanicIsA500AndCounted(t *testing.T) {
	var log bytes.Buffer
	e, reg := edge(&log)
	h := e.Handle("boom", func(http.ResponseWriter, *http.Request) error { panic("nil map") })
	w, body := serve(h, "GET", "/", "")
	if w.Code != 500 || body.Code != coreapi.CodeInternal || !strings.Contains(log.String(), "handler panic") {
		t.Errorf("panic: %d %+v %s", w.Code, body, log.String())
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "test_requests_total" {
			for _, m := range mf.GetMetric() {
				found = found || (m.GetCounter().GetValue() == 1 && strings.Contains(m.String(), "5xx") && strings.Contains(m.String(), "boom"))
			}
		}
	}
	if !found {
		t.Errorf("the panic is not counted as a 5xx of route boom: %v", mfs)
	}
}

func TestDecodeJSON(t *testing.T) {
	type req struct {
		Name string `json:"name"`
	}
	for _, tc := range []struct {
		body   string
		status int
		msg    string
	}{
		{`{"name":"a"}`, 0, ""},
		{` {"name":"a"} ` + "\n", 0, ""},
		{`{"name":"a","x":1}`, 400, `"x": not a field of this request (its fields: name;`},
		{`{"Name":"a"}`, 400, `"Name": not a field`},
		{`{"name":"a","name":"b"}`, 400, "name: given more than once"},
		{`{"name":1}`, 400, "name: want a string, not a JSON number"},
		{`["name"]`, 400, "want a JSON object"},
		{``, 400, "empty"},
		{`{"name":"a"} {}`, 400, "data after the JSON object (at byte 14)"},
		{`{"name":`, 400, "ends too soon"},
		{`{"name":"a"`, 400, "ends too soon"},
		{`{"name" "a"}`, 400, "not valid JSON at byte"},
		{`{"name":"` + strings.Repeat("a", 100) + `"}`, 413, "over the limit of 64 bytes"},
	} {
		w := httptest.NewRecorder()
		var v req
		err := httpapi.DecodeJSON(w, httptest.NewRequest("POST", "/", strings.NewReader(tc.body)), &v, 64)
		var he *httpapi.Error
		switch {
		case tc.status == 0 && (err != nil || v.Name != "a"):
			t.Errorf("%.20q: %v %+v", tc.body, err, v)
		case tc.status != 0 && (!errors.As(err, &he) || he.Status != tc.status || !strings.Contains(he.Message, tc.msg)):
			t.Errorf("%.20q: %v, want %d %q", tc.body, err, tc.status, tc.msg)
		}
	}
}

func TestRouterAnswersJSON(t *testing.T) {
	var log bytes.Buffer
	e, _ := edge(&log)
	routes := []coreapi.Route{
		{Name: "get_x", Method: http.MethodGet, Path: "/x/{id}"},
		{Name: "patch_x", Method: http.MethodPatch, Path: "/x/{id}"},
		{Name: "post_y", Method: http.MethodPost, Path: "/y"},
	}
	rt := e.Router(routes, map[string]httpapi.HandlerFunc{
		"get_x": func(w http.ResponseWriter, _ *http.Request) error {
			w.Header().Set("ETag", `"1"`)
			return httpapi.WriteJSON(w, http.StatusOK, map[string]int{"n": 1})
		},
		"patch_x": func(w http.ResponseWriter, _ *http.Request) error { return httpapi.WriteJSON(w, http.StatusOK, nil) },
		"post_y":  func(w http.ResponseWriter, _ *http.Request) error { return httpapi.WriteJSON(w, http.StatusOK, nil) },
	})
	get, _ := serve(rt, "GET", "/x/1", "")
	if get.Code != 200 || get.Header().Get("X-Content-Type-Options") != "nosniff" || get.Header().Get("Content-Length") != strconv.Itoa(get.Body.Len()) {
		t.Errorf("GET /x/1: %d %v", get.Code, get.Header())
	}
	// HEAD wherever GET is served: the same status and fields, no body.
	if w, _ := serve(rt, "HEAD", "/x/1", ""); w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("ETag") != `"1"` ||
		w.Header().Get("Content-Length") != get.Header().Get("Content-Length") {
		t.Errorf("HEAD /x/1: %d %v %q", w.Code, w.Header(), w.Body.String())
	}
	// 405 with Allow listing the path's methods, in the error body.
	for _, tc := range []struct{ method, path, allow string }{
		{"POST", "/x/1", "GET, HEAD, PATCH"}, {"DELETE", "/x/1", "GET, HEAD, PATCH"}, {"OPTIONS", "/x/1", "GET, HEAD, PATCH"},
		{"GET", "/y", "POST"}, {"HEAD", "/y", "POST"},
	} {
		w, body := serve(rt, tc.method, tc.path, "")
		if w.Code != 405 || w.Header().Get("Allow") != tc.allow || (tc.method != "HEAD" && body.Code != coreapi.CodeMethodNotAllowed) {
			t.Errorf("%s %s: %d Allow %q %+v", tc.method, tc.path, w.Code, w.Header().Get("Allow"), body)
		}
	}
	if w, body := serve(rt, "GET", "/z", ""); w.Code != 404 || body.Code != coreapi.CodeNotFound || w.Header().Get("Content-Type") != coreapi.MediaTypeJSON {
		t.Errorf("GET /z: %d %+v", w.Code, body)
	}
}

func TestRouterRefusesAMissingHandler(t *testing.T) {
	var log bytes.Buffer
	e, _ := edge(&log)
	for name, handlers := range map[string]map[string]httpapi.HandlerFunc{
		"a route without a handler": {},
		"a handler without a route": {"r": nil, "extra": nil},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			e.Router([]coreapi.Route{{Name: "r", Method: "GET", Path: "/r"}}, handlers)
		}()
	}
}

// Issue 14: If-None-Match with a weak tag, a list or * gave 200; If-Match:
// * gave 400. RFC 9110 §13.1.1, §13.1.2, §13.2.2, §8.8.3.2.
func TestPreconditions(t *testing.T) {
	const cur = `"7-abc"`
	for _, tc := range []struct {
		name, method string
		header       []string
		current      []string
		res          int
		status       int // of the error, 0 for none
	}{
		{"no condition", "GET", nil, []string{cur}, httpapi.Proceed, 0},
		{"If-None-Match the current tag", "GET", []string{"If-None-Match", cur}, []string{cur}, httpapi.NotModified, 0},
		{"If-None-Match another tag", "GET", []string{"If-None-Match", `"6-abc"`}, []string{cur}, httpapi.Proceed, 0},
		{"If-None-Match weak: weak comparison", "GET", []string{"If-None-Match", `W/"7-abc"`}, []string{cur}, httpapi.NotModified, 0},
		{"If-None-Match a list", "GET", []string{"If-None-Match", `"1", W/"2" ,, "7-abc"`}, []string{cur}, httpapi.NotModified, 0},
		{"If-None-Match over two field lines", "GET", []string{"If-None-Match", `"1"`, "If-None-Match", cur}, []string{cur}, httpapi.NotModified, 0},
		{"If-None-Match a comma inside a tag", "GET", []string{"If-None-Match", `"7-abc,x"`}, []string{cur}, httpapi.Proceed, 0},
		{"If-None-Match *", "GET", []string{"If-None-Match", "*"}, []string{cur}, httpapi.NotModified, 0},
		{"If-None-Match * on HEAD", "HEAD", []string{"If-None-Match", "*"}, []string{cur}, httpapi.NotModified, 0},
		{"If-None-Match * with nothing there", "GET", []string{"If-None-Match", "*"}, nil, httpapi.Proceed, 0},
		{"If-None-Match matching on a change", "PATCH", []string{"If-None-Match", "*"}, []string{cur}, 0, 412},
		{"If-Match *", "PATCH", []string{"If-Match", "*"}, []string{cur}, httpapi.Proceed, 0},
		{"If-Match * with nothing there", "PATCH", []string{"If-Match", "*"}, nil, 0, 412},
		{"If-Match the current tag", "PATCH", []string{"If-Match", cur}, []string{cur}, httpapi.Proceed, 0},
		{"If-Match a list", "PATCH", []string{"If-Match", `"1", "7-abc"`}, []string{cur}, httpapi.Proceed, 0},
		{"If-Match another spelling of the version", "PATCH", []string{"If-Match", `"7"`}, []string{cur, `"7"`}, httpapi.Proceed, 0},
		{"If-Match weak: strong comparison fails", "PATCH", []string{"If-Match", `W/"7-abc"`}, []string{cur}, 0, 412},
		{"If-Match stale", "PATCH", []string{"If-Match", `"6-abc"`}, []string{cur}, 0, 412},
		{"If-Match first: a false one is 412 before If-None-Match", "GET", []string{"If-Match", `"6"`, "If-None-Match", cur}, []string{cur}, 0, 412},
		{"unquoted", "PATCH", []string{"If-Match", "7"}, []string{cur}, 0, 400},
		{"no closing quote", "GET", []string{"If-None-Match", `"7`}, []string{cur}, 0, 400},
		{"* in a list", "GET", []string{"If-None-Match", `*, "7"`}, []string{cur}, 0, 400},
		{"a space inside", "GET", []string{"If-None-Match", `"7 abc"`}, []string{cur}, 0, 400},
		{"two tags without a comma", "GET", []string{"If-None-Match", `"1" "2"`}, []string{cur}, 0, 400},
		{"only commas", "GET", []string{"If-None-Match", ` , ,`}, []string{cur}, 0, 400},
		{"lower-case w/", "GET", []string{"If-None-Match", `w/"7-abc"`}, []string{cur}, 0, 400},
	} {
		r := httptest.NewRequest(tc.method, "/", nil)
		for i := 0; i+1 < len(tc.header); i += 2 {
			r.Header.Add(tc.header[i], tc.header[i+1])
		}
		res, err := httpapi.Preconditions(r, tc.current...)
		var he *httpapi.Error
		switch {
		case tc.status == 0 && (err != nil || res != tc.res):
			t.Errorf("%s: %d %v, want %d", tc.name, res, err, tc.res)
		case tc.status != 0 && (!errors.As(err, &he) || he.Status != tc.status):
			t.Errorf("%s: %d %v, want a %d", tc.name, res, err, tc.status)
		case tc.status == 400 && !strings.Contains(he.Message, tc.header[0]):
			t.Errorf("%s: %q does not name the field", tc.name, he.Message)
		case tc.status == 412 && he.Code != coreapi.CodeVersionConflict:
			t.Errorf("%s: code %s", tc.name, he.Code)
		}
	}
}

// FuzzPreconditions: any field value is evaluated or refused with a 400,
// never a panic; a list holding the current tag always matches.
func FuzzPreconditions(f *testing.F) {
	for _, s := range []string{`"1"`, `W/"1", "2"`, "*", `"a,b"`, `,`, `W/`, "\"\x80\"", `"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("If-None-Match", h)
		_, err := httpapi.Preconditions(r, `"cur"`)
		var he *httpapi.Error
		if err != nil && (!errors.As(err, &he) || he.Status != 400) {
			t.Fatalf("%q: %v", h, err)
		}
		if err == nil && strings.TrimSpace(h) != "*" {
			r.Header.Set("If-None-Match", h+`, "cur"`)
			if res, err := httpapi.Preconditions(r, `"cur"`); err != nil || res != httpapi.NotModified {
				t.Fatalf("%q with the current tag added: %d %v", h, res, err)
			}
		}
	})
}
