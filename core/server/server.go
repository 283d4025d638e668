// Package server is core's HTTP API over mTLS: routes (gorilla/mux), the
// role of each caller taken only from its verified client certificate,
// per-identity rate limits, Prometheus metrics, and the queue that builds
// new bundles and publishes notifications after every change.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
)

// Notifier publishes a device's new generation.
type Notifier interface {
	Notify(ctx context.Context, n coreapi.Notification) error
}

// Revoker revokes a certificate at the CA (optional).
type Revoker interface {
	Revoke(ctx context.Context, certSerial, reason string) error
}

// Config of the server.
type Config struct {
	TrustDomain string
	// Limits per role: requests per second and burst.
	Limits map[pki.Role]Limit
	// DefaultGroup is the group of registrations that name none.
	DefaultGroup string
	// QueueSize bounds pending notification jobs.
	QueueSize int
}

// Limit is a token bucket.
type Limit struct {
	Rate  float64
	Burst int
}

// DefaultLimits are the per-identity limits when Config gives none.
var DefaultLimits = map[pki.Role]Limit{
	pki.RoleDevice: {Rate: 2, Burst: 10},
	pki.RoleProxy:  {Rate: 2000, Burst: 4000}, // three calls per enrollment
	pki.RoleAdmin:  {Rate: 50, Burst: 100},
	pki.RoleCore:   {Rate: 50, Burst: 100},
}

// Server handles core's API.
type Server struct {
	cfg      Config
	store    *store.Store
	policy   *policy.Policy
	images   *bundlecache.Cache
	notifier Notifier
	revoker  Revoker
	log      *slog.Logger
	limiter  *limiter
	jobs     chan job
	metrics  *metrics
	router   *mux.Router
	ready    func() error
}

// Option sets an optional dependency.
type Option func(*Server)

// WithRevoker revokes device certificates at the CA on revoke.
func WithRevoker(r Revoker) Option { return func(s *Server) { s.revoker = r } }

// WithReadiness adds a readiness check (the broker, say).
func WithReadiness(f func() error) Option { return func(s *Server) { s.ready = f } }

// WithRegistry registers the metrics with reg instead of a new registry.
func WithRegistry(reg *prometheus.Registry) Option {
	return func(s *Server) { s.metrics = newMetrics(reg, s.images) }
}

// New makes a server. Every dependency is explicit.
func New(cfg Config, st *store.Store, pol *policy.Policy, cache *bundlecache.Cache, n Notifier, log *slog.Logger, opts ...Option) *Server {
	if cfg.Limits == nil {
		cfg.Limits = DefaultLimits
	}
	if cfg.DefaultGroup == "" {
		cfg.DefaultGroup = "default"
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = 4096
	}
	s := &Server{cfg: cfg, store: st, policy: pol, images: cache, notifier: n, log: log.With("component", "api"),
		limiter: newLimiter(cfg.Limits), jobs: make(chan job, cfg.QueueSize)}
	for _, o := range opts {
		o(s)
	}
	if s.metrics == nil {
		s.metrics = newMetrics(prometheus.NewRegistry(), cache)
	}
	s.router = s.routes()
	return s
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// TLSConfig is the server's TLS configuration: TLS 1.3, client
// certificates from the deployment's root verified when given (health
// checks come without), identities checked at the handshake.
func TLSConfig(kp *pki.KeyPair, bundle *pki.TrustBundle, checkRevoked func(*x509.Certificate) error) *tls.Config {
	return pki.ServerTLSConfig(kp, bundle, pki.ServerOptions{ClientAuth: tls.VerifyClientCertIfGiven, CheckRevoked: checkRevoked})
}

type route struct {
	method, path string
	roles        []pki.Role // empty: no certificate needed
	name         string
	h            func(w http.ResponseWriter, r *http.Request, id pki.Identity) error
}

func (s *Server) routes() *mux.Router {
	rt := mux.NewRouter()
	admin, device, proxy := pki.RoleAdmin, pki.RoleDevice, pki.RoleProxy
	for _, rr := range []route{
		{http.MethodPost, "/v1/devices", []pki.Role{proxy}, "register", s.register},
		{http.MethodGet, "/v1/devices", []pki.Role{admin}, "list", s.list},
		{http.MethodPost, "/v1/devices/{serial}/certificates", []pki.Role{proxy}, "record_issued", s.recordIssued},
		{http.MethodGet, "/v1/devices/{serial}", []pki.Role{admin, device}, "device", s.device},
		{http.MethodGet, "/v1/devices/{serial}/bundle", []pki.Role{device, proxy}, "bundle", s.bundle},
		{http.MethodPatch, "/v1/devices/{serial}/data", []pki.Role{admin}, "set_device_data", s.setDeviceData},
		{http.MethodPost, "/v1/devices/{serial}/reprovision", []pki.Role{admin}, "reprovision", s.reprovision},
		{http.MethodPost, "/v1/devices/{serial}/revoke", []pki.Role{admin}, "revoke", s.revoke},
		{http.MethodGet, "/v1/devices/{serial}/audit", []pki.Role{admin}, "device_audit", s.deviceAudit},
		{http.MethodGet, "/v1/groups/{group}", []pki.Role{admin}, "group", s.group},
		{http.MethodPatch, "/v1/groups/{group}/data", []pki.Role{admin}, "set_group_data", s.setGroupData},
		{http.MethodGet, "/v1/groups/{group}/audit", []pki.Role{admin}, "group_audit", s.groupAudit},
		{http.MethodGet, "/v1/backup", []pki.Role{admin}, "backup", s.backup},
		{http.MethodGet, "/healthz", nil, "healthz", s.healthz},
		{http.MethodGet, "/readyz", nil, "readyz", s.readyz},
	} {
		rt.Handle(rr.path, s.wrap(rr)).Methods(rr.method)
	}
	rt.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})).Methods(http.MethodGet)
	rt.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.log, newError(http.StatusNotFound, "not_found", "no such route", nil))
	})
	rt.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, s.log, newError(http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed", nil))
	})
	return rt
}

type ctxKey struct{}

func identityFrom(r *http.Request) (pki.Identity, bool) {
	id, ok := r.Context().Value(ctxKey{}).(pki.Identity)
	return id, ok
}

// wrap is the one adapter between handlers and HTTP: identity and role,
// rate limit, body limit, panic recovery, metrics, and error writing.
func (s *Server) wrap(rr route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("handler panic", "route", rr.name, "panic", p, "stack", string(debug.Stack()))
				writeError(rec, r, s.log, newError(http.StatusInternalServerError, "internal", "internal error", nil))
			}
			s.metrics.requests.WithLabelValues(rr.name, statusClass(rec.status)).Inc()
			s.metrics.duration.WithLabelValues(rr.name).Observe(time.Since(start).Seconds())
		}()
		r.Body = http.MaxBytesReader(rec, r.Body, coreapi.MaxRequestBody)

		var id pki.Identity
		if len(rr.roles) > 0 {
			var err error
			id, err = pki.PeerIdentity(r.TLS)
			if err != nil {
				writeError(rec, r, s.log, newError(http.StatusUnauthorized, "unauthenticated", "a client certificate of this deployment is required", err))
				return
			}
			if !slices.Contains(rr.roles, id.Role) {
				writeError(rec, r, s.log, newError(http.StatusForbidden, "forbidden", "this identity's role may not use this route", nil))
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, id))
		}
		if wait, ok := s.limiter.allow(id, r); !ok {
			e := newError(http.StatusTooManyRequests, "rate_limited", "too many requests; slow down", nil)
			e.RetryAfter = wait
			writeError(rec, r, s.log, e)
			return
		}
		if err := rr.h(rec, r, id); err != nil {
			writeError(rec, r, s.log, fromStore(err))
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func statusClass(code int) string {
	return [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}[min(max(code/100, 1), 5)-1]
}

// certFingerprint is the SHA-256 of the client's leaf, hex.
func certFingerprint(r *http.Request) (string, *x509.Certificate) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return "", nil
	}
	leaf := r.TLS.VerifiedChains[0][0]
	sum := sha256.Sum256(leaf.Raw)
	return hex.EncodeToString(sum[:]), leaf
}
