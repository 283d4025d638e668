package httpapi_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
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
		{`{"name":"a","x":1}`, 400, "unknown field"},
		{`{"name":"a"} {}`, 400, "after the JSON"},
		{`{"name":`, 400, "not the expected JSON"},
		{`{"name":"` + strings.Repeat("a", 100) + `"}`, 413, "over 64 bytes"},
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
	rt := e.Router()
	rt.Handle("/x", e.Handle("x", func(w http.ResponseWriter, _ *http.Request) error {
		return httpapi.WriteJSON(w, http.StatusOK, map[string]int{"n": 1})
	})).Methods(http.MethodGet)
	if w, _ := serve(rt, "GET", "/x", ""); w.Code != 200 || w.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("GET /x: %d %v", w.Code, w.Header())
	}
	if w, body := serve(rt, "POST", "/x", ""); w.Code != 405 || body.Code != coreapi.CodeMethodNotAllowed {
		t.Errorf("POST /x: %d %+v", w.Code, body)
	}
	if w, body := serve(rt, "GET", "/y", ""); w.Code != 404 || body.Code != coreapi.CodeNotFound {
		t.Errorf("GET /y: %d %+v", w.Code, body)
	}
}
