// Package server is the factory side of the proxy: POST /v1/enroll for new
// devices (TLS with the proxy's certificate; devices have none yet), a
// read-only status page at / for the factory line, /healthz, /readyz and
// Prometheus /metrics.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/enroll"
	"github.com/fleetprov/prov/proxy/vouch"
)

// Enroller is what the server needs of enroll.Enroller.
type Enroller interface {
	Enroll(ctx context.Context, req enrollapi.EnrollRequest, source netip.Addr) (*enrollapi.EnrollResponse, error)
	Reject(source netip.Addr, reason string) error
	Status() enroll.Status
}

// Metrics counts enrollments; Observe is the enroller's hook.
type Metrics struct {
	reg      *prometheus.Registry
	results  *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the proxy's metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_proxy_enrollments_total", Help: "Enrollment attempts by result (enrolled, refused, failed).",
		}, []string{"result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "prov_proxy_enrollment_seconds", Help: "Enrollment latency by result.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"result"}),
	}
	m.reg.MustRegister(m.results, m.duration, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe records one attempt.
func (m *Metrics) Observe(result string, d time.Duration) {
	m.results.WithLabelValues(result).Inc()
	m.duration.WithLabelValues(result).Observe(d.Seconds())
}

// Server is the factory-side HTTP handler.
type Server struct {
	enroller Enroller
	metrics  *Metrics
	log      *slog.Logger
	ready    func() error
	timeout  time.Duration
	mux      *http.ServeMux
}

// New makes the handler. timeout bounds one enrollment's calls to core and
// step-ca.
func New(e Enroller, m *Metrics, log *slog.Logger, ready func() error, timeout time.Duration) *Server {
	s := &Server{enroller: e, metrics: m, log: log.With("component", "http"), ready: ready, timeout: timeout, mux: http.NewServeMux()}
	s.mux.HandleFunc("POST "+enrollapi.PathEnroll, s.enroll)
	s.mux.HandleFunc("GET /{$}", s.status)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.ready(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, enrollapi.Error{Code: "not_ready", Reason: err.Error()})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "ready"})
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return s
}

// ServeHTTP serves the factory side.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, enrollapi.Error{Code: "bad_request", Reason: "unknown source address"})
		return
	}
	var req enrollapi.EnrollRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, enrollapi.MaxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		// Recorded too, and the network and rate rules still come first.
		s.answer(w, s.enroller.Reject(ap.Addr().Unmap(), "the body is not an enrollment request (JSON with board, hardwareId and csr)"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	resp, err := s.enroller.Enroll(ctx, req, ap.Addr().Unmap())
	if err != nil {
		s.answer(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// answer maps an enrollment error to a status and a reason a factory
// operator can act on; internal details of core and step-ca stay in the
// proxy's log.
func (s *Server) answer(w http.ResponseWriter, err error) {
	var refusal *vouch.Refusal
	var bad *enroll.BadRequest
	var up *enroll.Upstream
	switch {
	case errors.As(err, &refusal):
		status := http.StatusForbidden
		if refusal.Rule == "rate" {
			status = http.StatusTooManyRequests
			w.Header().Set("Retry-After", strconv.Itoa(refusal.RetryAfter))
		}
		writeJSON(w, status, enrollapi.Error{Code: "refused_" + refusal.Rule, Reason: refusal.Reason})
	case errors.As(err, &bad):
		writeJSON(w, http.StatusBadRequest, enrollapi.Error{Code: "bad_request", Reason: bad.Reason})
	case errors.As(err, &up):
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusBadGateway, enrollapi.Error{Code: "upstream", Reason: "could not " + up.Step + "; try again"})
	default:
		writeJSON(w, http.StatusInternalServerError, enrollapi.Error{Code: "internal", Reason: "internal error; try again"})
	}
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10"><title>prov-proxy</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}
.enrolled{color:#070}.refused{color:#a60}.failed{color:#b00}</style></head><body>
<h1>Factory enrollment</h1>
<p>{{.Day}}: <b class="enrolled">{{index .Counts "enrolled"}} enrolled</b>, <b class="refused">{{index .Counts "refused"}} refused</b>, <b class="failed">{{index .Counts "failed"}} failed</b>.</p>
<table><tr><th>time</th><th>result</th><th>source</th><th>board</th><th>serial</th><th>reason</th></tr>
{{range .Recent}}<tr><td>{{.Time.Format "15:04:05"}}</td><td class="{{.Result}}">{{.Result}}</td><td>{{.Source}}</td><td>{{.Board}}</td><td>{{.Serial}}</td><td>{{.Reason}}</td></tr>
{{end}}</table></body></html>
`))

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	if err := statusPage.Execute(w, s.enroller.Status()); err != nil {
		s.log.Warn("status page", "err", err)
	}
}
