// Package httpapi is the HTTP edge core and the proxy share: one typed
// error that handlers return (status, public code and message, internal
// cause), and one adapter that writes it as the one error body of both
// services (coreapi.Error) and logs its cause once; JSON in and out with
// limits; a gorilla/mux router whose 404 and 405 are JSON errors too; panic
// recovery and request metrics per route.
package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/untrusted"
)

// Error is the one error type handlers return: a status, a public code and
// message, and the internal cause, which is logged once and never sent.
type Error struct {
	Status     int
	Code       coreapi.ErrorCode
	Message    string
	Cause      error
	RetryAfter int // seconds, for 429 and 503
}

// NewError makes an Error.
func NewError(status int, code coreapi.ErrorCode, msg string, cause error) *Error {
	return &Error{Status: status, Code: code, Message: msg, Cause: cause}
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%d %s: %v", e.Status, e.Message, e.Cause)
	}
	return fmt.Sprintf("%d %s", e.Status, e.Message)
}

func (e *Error) Unwrap() error { return e.Cause }

// BadRequest is a 400 whose message names the field that is wrong.
func BadRequest(msg string, cause error) *Error {
	return NewError(http.StatusBadRequest, coreapi.CodeBadRequest, msg, cause)
}

// Internal is a 500; the cause stays in the log.
func Internal(cause error) *Error {
	return NewError(http.StatusInternalServerError, coreapi.CodeInternal, "internal error", cause)
}

// HandlerFunc is a handler that returns its error instead of writing it.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Edge adapts HandlerFuncs to http.Handlers. Its zero value is not usable;
// make one with NewEdge.
type Edge struct {
	log      *slog.Logger
	classify func(error) *Error
	logAttrs func(*http.Request) []any
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// EdgeOptions tune an Edge.
type EdgeOptions struct {
	// Classify maps the errors of the layers below to public ones; nil,
	// or a nil answer, makes an error that is not an *Error a 500.
	Classify func(error) *Error
	// LogAttrs adds request attributes to the log line of a refusal (the
	// caller's identity, say).
	LogAttrs func(*http.Request) []any
}

// NewEdge makes an edge whose request metrics are named
// <namespace>_requests_total and <namespace>_request_seconds, registered
// with reg.
func NewEdge(log *slog.Logger, reg prometheus.Registerer, namespace string, o EdgeOptions) *Edge {
	e := &Edge{
		log: log, classify: o.Classify, logAttrs: o.LogAttrs,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: namespace + "_requests_total", Help: "API requests by route and status class.",
		}, []string{"route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: namespace + "_request_seconds", Help: "API request latency by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"route"}),
	}
	reg.MustRegister(e.requests, e.duration)
	return e
}

// Handle is the one adapter between a handler and HTTP: panic recovery,
// metrics under the route's name, and error writing.
func (e *Edge) Handle(route string, h HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			if p := recover(); p != nil {
				e.log.Error("handler panic", "route", route, "panic", p, "stack", string(debug.Stack()))
				if !rec.wrote {
					e.WriteError(rec, r, Internal(nil))
				}
			}
			e.requests.WithLabelValues(route, statusClass(rec.status)).Inc()
			e.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		if err := h(rec, r); err != nil {
			e.WriteError(rec, r, err)
		}
	})
}

// Router serves routes on gorilla/mux, each with the handler of its name
// in handlers (a route without one, or a handler without a route, is a
// programming error: it panics at start). Per path, as RFC 9110 asks:
// HEAD wherever GET is served (the GET handler, its body discarded,
// §9.3.2), and any other method 405 with an Allow header listing the
// path's methods (§15.5.6). Unknown paths are 404; both are the JSON
// error body.
func (e *Edge) Router(routes []coreapi.Route, handlers map[string]HandlerFunc) *mux.Router {
	rt := mux.NewRouter()
	rt.NotFoundHandler = e.Handle("not_found", func(http.ResponseWriter, *http.Request) error {
		return NewError(http.StatusNotFound, coreapi.CodeNotFound, "no such route", nil)
	})
	notAllowed := e.Handle("method_not_allowed", func(_ http.ResponseWriter, r *http.Request) error {
		return NewError(http.StatusMethodNotAllowed, coreapi.CodeMethodNotAllowed, r.Method+" is not a method of this route", nil)
	})
	rt.MethodNotAllowedHandler = notAllowed
	byPath := map[string]map[string]http.Handler{}
	var paths []string
	left := len(handlers)
	for _, route := range routes {
		h, ok := handlers[route.Name]
		if !ok {
			panic(fmt.Sprintf("httpapi: no handler for route %s", route.Name))
		}
		left--
		if byPath[route.Path] == nil {
			byPath[route.Path] = map[string]http.Handler{}
			paths = append(paths, route.Path)
		}
		byPath[route.Path][route.Method] = e.Handle(route.Name, h)
	}
	if left != 0 {
		panic(fmt.Sprintf("httpapi: %d handlers without a route", left))
	}
	for _, path := range paths {
		methods := byPath[path]
		allow := strings.Join(coreapi.Methods(routes, path), ", ")
		rt.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if h, ok := methods[r.Method]; ok {
				h.ServeHTTP(w, r)
				return
			}
			if h, ok := methods[http.MethodGet]; ok && r.Method == http.MethodHead {
				h.ServeHTTP(headWriter{w}, r)
				return
			}
			w.Header().Set("Allow", allow)
			notAllowed.ServeHTTP(w, r)
		}))
	}
	return rt
}

// headWriter answers HEAD with the GET handler: its status and header
// fields, no body.
type headWriter struct{ http.ResponseWriter }

func (h headWriter) Write(b []byte) (int, error) { return len(b), nil }

// Unwrap lets http.ResponseController reach the connection.
func (h headWriter) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// public maps any error to the one a client sees.
func (e *Edge) public(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	if e.classify != nil {
		if pe := e.classify(err); pe != nil {
			return pe
		}
	}
	return Internal(err)
}

// WriteError writes err as the JSON error body and logs it once, with its
// cause: 5xx as errors, the rest as information.
func (e *Edge) WriteError(w http.ResponseWriter, r *http.Request, err error) {
	pe := e.public(err)
	level := slog.LevelInfo
	if pe.Status >= 500 {
		level = slog.LevelError
	}
	attrs := []any{"status", pe.Status, "code", pe.Code, "method", r.Method, "path", r.URL.Path}
	if e.logAttrs != nil {
		attrs = append(attrs, e.logAttrs(r)...)
	}
	if pe.Cause != nil {
		attrs = append(attrs, "cause", pe.Cause.Error())
	}
	e.log.Log(r.Context(), level, "request refused", attrs...)
	if pe.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(pe.RetryAfter))
	}
	_ = WriteJSON(w, pe.Status, coreapi.Error{Code: pe.Code, Message: pe.Message})
}

// WriteJSON writes v as a JSON answer; it encodes first, so an encoding
// error is returned before the status is out.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(v); err != nil {
		return err
	}
	w.Header().Set("Content-Type", coreapi.MediaTypeJSON)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// Declared, so that a HEAD, whose body is discarded, says it too.
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	w.WriteHeader(status)
	_, err := w.Write(b.Bytes())
	return err
}

// Readiness is the body of a 200 answer of /readyz: ready, with warnings
// an operator should act on before they stop it being so (a certificate
// near its end).
type Readiness struct {
	Status   string   `json:"status"` // "ready"
	Warnings []string `json:"warnings,omitempty"`
}

// WriteReady answers /readyz with 200 and the warnings, if any.
func WriteReady(w http.ResponseWriter, warnings []string) error {
	return WriteJSON(w, http.StatusOK, Readiness{Status: "ready", Warnings: warnings})
}

// DecodeJSON reads one JSON object into v, a pointer to a struct, from a
// body of at most max bytes. Every refusal names what is wrong: a body
// over the limit is 413 naming the limit in bytes; a body that is not one
// JSON object, a member that is not a field of v (names are matched
// exactly: encoding/json alone would take "Board" for "board"), a member
// given twice, or a value of the wrong type is 400 naming the member, the
// rule or the byte offset. Only the object's own members are checked so;
// nested objects are data (maps), read as encoding/json reads them.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any, max int64) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return NewError(http.StatusRequestEntityTooLarge, coreapi.CodeTooLarge,
				fmt.Sprintf("request body: over the limit of %d bytes", max), err)
		}
		return BadRequest("request body: cannot be read", err)
	}
	if err := checkMembers(body, v); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields() // checkMembers has; a second guard
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return BadRequest(fmt.Sprintf("request body: data after the JSON object (at byte %d)", dec.InputOffset()), nil)
	}
	return nil
}

// checkMembers refuses a body that is not a JSON object, or whose members
// are not exactly v's field names, each at most once.
func checkMembers(body []byte, v any) error {
	fields := jsonFields(v)
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if errors.Is(err, io.EOF) {
		return BadRequest("request body: empty; want a JSON object", nil)
	}
	if err != nil {
		return decodeError(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return BadRequest("request body: want a JSON object", nil)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return decodeError(err)
		}
		name, _ := tok.(string) // a member name: Token returns strings only here
		switch {
		case !slices.Contains(fields, name):
			return BadRequest(fmt.Sprintf("%s: not a field of this request (its fields: %s; names are case-sensitive)",
				untrusted.Quote(name), strings.Join(fields, ", ")), nil)
		case seen[name]:
			return BadRequest(fmt.Sprintf("%s: given more than once", name), nil)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return decodeError(err)
		}
	}
	return nil
}

// jsonFields are the member names of the struct v points to, as its json
// tags spell them.
func jsonFields(v any) []string {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var names []string
	if t.Kind() != reflect.Struct {
		return names
	}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		names = append(names, name)
	}
	return names
}

// decodeError names what encoding/json found wrong, by its typed errors:
// where the syntax broke, or which member has a value of the wrong type.
// The input itself is not echoed.
func decodeError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return BadRequest(fmt.Sprintf("request body: not valid JSON at byte %d", syntax.Offset), err)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return BadRequest("request body: the JSON ends too soon", err)
	case errors.As(err, &typ) && typ.Field != "":
		return BadRequest(fmt.Sprintf("%s: want %s, not a JSON %s", typ.Field, kindName(typ.Type), typ.Value), err)
	case errors.As(err, &typ):
		return BadRequest(fmt.Sprintf("request body: want %s, not a JSON %s", kindName(typ.Type), typ.Value), err)
	}
	return BadRequest("request body: not the expected JSON", err)
}

// kindName is how a Go type is spelt in JSON.
func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "a " + t.String()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status, s.wrote = code, true
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func statusClass(code int) string {
	return [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}[min(max(code/100, 1), 5)-1]
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
