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
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
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

// Router is a gorilla/mux router whose unknown routes and methods answer
// with the JSON error body.
func (e *Edge) Router() *mux.Router {
	rt := mux.NewRouter()
	rt.NotFoundHandler = e.Handle("not_found", func(http.ResponseWriter, *http.Request) error {
		return NewError(http.StatusNotFound, coreapi.CodeNotFound, "no such route", nil)
	})
	rt.MethodNotAllowedHandler = e.Handle("method_not_allowed", func(http.ResponseWriter, *http.Request) error {
		return NewError(http.StatusMethodNotAllowed, coreapi.CodeMethodNotAllowed, "method not allowed", nil)
	})
	return rt
}

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

// DecodeJSON reads one JSON object into v from a body of at most max
// bytes: unknown fields, trailing data and an oversize body are refused
// with a message that says which.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any, max int64) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, max))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return NewError(http.StatusRequestEntityTooLarge, coreapi.CodeTooLarge, fmt.Sprintf("request body over %d bytes", max), err)
		}
		return BadRequest("request body is not the expected JSON: "+err.Error(), err)
	}
	if dec.More() {
		return BadRequest("data after the JSON object", nil)
	}
	return nil
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
