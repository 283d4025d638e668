// Package server is the factory side of the proxy: the routes of
// enrollapi's table on gorilla/mux (POST /v1/enroll for new devices, on TLS
// with the proxy's certificate; devices have none yet), a read-only status
// page at / for the factory line and Prometheus /metrics, both for the
// allowed networks only, and /healthz and /readyz for anyone. Errors are
// core's one JSON error body.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/proxy/batchreport"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/enroll"
	"github.com/fleetprov/prov/proxy/status"
	"github.com/fleetprov/prov/proxy/vouch"
)

// Enroller is what the server needs of enroll.Enroller.
type Enroller interface {
	Enroll(ctx context.Context, req enrollapi.EnrollRequest, source netip.Addr) (*enrollapi.EnrollResponse, error)
	Challenge(req enrollapi.ChallengeRequest, source netip.Addr) (*enrollapi.ChallengeResponse, error)
	Reject(source netip.Addr, reason string) error
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

// Register adds collectors to what /metrics serves (the proxy's
// certificate's expiry and renewals).
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Observe records one attempt.
func (m *Metrics) Observe(result string, d time.Duration) {
	m.results.WithLabelValues(result).Inc()
	m.duration.WithLabelValues(result).Observe(d.Seconds())
}

// Server is the factory-side HTTP handler.
type Server struct {
	enroller Enroller
	con      *status.Console
	log      *slog.Logger
	o        Options
	edge     *httpapi.Edge
	router   *mux.Router
	console  *mux.Router // the console's routes alone (Console)
}

// Options are the server's settings.
type Options struct {
	// Ready says whether core and step-ca answer as themselves (/readyz).
	Ready func() error
	// Timeout bounds one enrollment's calls to core and step-ca.
	Timeout time.Duration
	// Viewers are the networks that may read the status page and
	// /metrics (serials, sources, reasons); any other source gets 403.
	// None: nobody.
	Viewers []netip.Prefix
	// Warnings, if set, are added to a ready answer of /readyz (the
	// proxy's certificate near its end).
	Warnings func() []string
	// Report, if set, exports a batch's signed report from the console:
	// a zip of the report file, its signature and the signer's chain.
	Report func(batch string, format batchreport.Format) (name string, zip []byte, err error)
}

// New makes the handler; con is what the factory console shows.
func New(e Enroller, con *status.Console, m *Metrics, log *slog.Logger, o Options) *Server {
	log = log.With("component", "http")
	s := &Server{enroller: e, con: con, log: log, o: o,
		edge: httpapi.NewEdge(log, m.reg, "prov_proxy", httpapi.EdgeOptions{Classify: classify})}
	metrics := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	// /healthz and /readyz stay open: they tell a load balancer or a
	// supervisor "up" or "not ready, and which upstream", nothing of the
	// devices.
	handlers := map[string]httpapi.HandlerFunc{
		enrollapi.RouteEnroll.Name:          s.enroll,
		enrollapi.RouteEnrollChallenge.Name: s.challenge,
		enrollapi.RouteHealthz.Name: func(w http.ResponseWriter, _ *http.Request) error {
			return httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		},
		enrollapi.RouteReadyz.Name: s.readyz,
		enrollapi.RouteMetrics.Name: s.viewersOnly(func(w http.ResponseWriter, r *http.Request) error {
			metrics.ServeHTTP(w, r)
			return nil
		}),
	}
	console := s.consoleHandlers()
	maps.Copy(handlers, console)
	s.router = s.edge.Router(enrollapi.Routes, handlers)
	console[enrollapi.RouteHealthz.Name] = handlers[enrollapi.RouteHealthz.Name]
	s.console = s.edge.Router(enrollapi.ConsoleRoutes, console)
	return s
}

// ServeHTTP serves the factory side.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// Console serves the console's routes alone (and /healthz), for a
// listener of its own: browsers refuse the proxy's identity certificate
// (see docs/factory.md), so the console may have a certificate and port
// of its own.
func (s *Server) Console() http.Handler { return s.console }

// viewersOnly serves h to the allowed networks only: the status page and
// the metrics show serials, source addresses and refusal reasons, which
// the factory line needs and nobody else does.
func (s *Server) viewersOnly(h httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		src, err := source(r)
		if err != nil {
			return err
		}
		for _, n := range s.o.Viewers {
			if n.Contains(src) {
				return h(w, r)
			}
		}
		return httpapi.NewError(http.StatusForbidden, enrollapi.RuleNetwork.Code(),
			fmt.Sprintf("%s is not on a network allowed to read the status page and metrics", src), nil)
	}
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) error {
	if err := s.o.Ready(); err != nil {
		return httpapi.NewError(http.StatusServiceUnavailable, coreapi.CodeNotReady, err.Error(), nil)
	}
	var warnings []string
	if s.o.Warnings != nil {
		warnings = s.o.Warnings()
	}
	return httpapi.WriteReady(w, warnings)
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request) error {
	src, err := source(r)
	if err != nil {
		return err
	}
	var req enrollapi.EnrollRequest
	if err := s.decode(w, r, src, &req); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.o.Timeout)
	defer cancel()
	resp, err := s.enroller.Enroll(ctx, req, src)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, resp)
}

// challenge answers a board's request for a TPM attestation challenge.
func (s *Server) challenge(w http.ResponseWriter, r *http.Request) error {
	src, err := source(r)
	if err != nil {
		return err
	}
	var req enrollapi.ChallengeRequest
	if err := s.decode(w, r, src, &req); err != nil {
		return err
	}
	resp, err := s.enroller.Challenge(req, src)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, resp)
}

// decode reads a device's request body into v. A body that cannot be read
// is recorded too, and the network and rate rules still come first; past
// them, the answer is the decode error itself: 413 naming the limit, or
// 400 naming the member or the rule.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, src netip.Addr, v any) error {
	err := httpapi.DecodeJSON(w, r, v, enrollapi.MaxRequestBody)
	if err == nil {
		return nil
	}
	var bad *httpapi.Error
	if !errors.As(err, &bad) {
		return err
	}
	rerr := s.enroller.Reject(src, bad.Message)
	var reason *enroll.BadRequest
	if errors.As(rerr, &reason) {
		return bad
	}
	return rerr
}

// source is the request's source address (a v4-mapped one unmapped): the
// TCP peer, as the proxy is reached directly on the factory network.
func source(r *http.Request) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, httpapi.BadRequest("unknown source address", err)
	}
	return ap.Addr().Unmap(), nil
}

// classify maps an enrollment error to a status and a message a factory
// operator can act on; internal details of core and step-ca stay in the
// proxy's log.
func classify(err error) *httpapi.Error {
	var refusal *vouch.Refusal
	var bad *enroll.BadRequest
	var up *enroll.Upstream
	switch {
	case errors.As(err, &refusal):
		e := httpapi.NewError(http.StatusForbidden, refusal.Rule.Code(), refusal.Reason, nil)
		if refusal.Rule == enrollapi.RuleRate {
			e.Status, e.RetryAfter = http.StatusTooManyRequests, refusal.RetryAfter
		}
		return e
	case errors.As(err, &bad):
		return httpapi.BadRequest(bad.Reason, nil)
	case errors.As(err, &up):
		// The enroller has logged the cause with the attempt.
		e := httpapi.NewError(http.StatusBadGateway, enrollapi.CodeUpstream, "could not "+up.Step+"; try again", nil)
		e.RetryAfter = 5
		return e
	}
	e := httpapi.Internal(err)
	e.Message = "internal error; try again"
	return e
}
