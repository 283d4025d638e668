// Package server is core's HTTP edge over mTLS: the routes of coreapi's
// table on gorilla/mux, the caller's role taken only from its verified
// client certificate, per-identity rate limits, request metrics, and thin
// handlers that decode a request, call the registry and encode its answer.
// What a request does is the registry's (core/registry); what happens
// after a change is the change worker's (core/notify).
package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/internal/httpapi"
	"github.com/fleetprov/prov/pki"
)

// Limit is a token bucket: requests per second and burst.
type Limit struct {
	Rate  float64
	Burst int
}

// DefaultLimits are the per-identity limits of each role.
var DefaultLimits = map[pki.Role]Limit{
	pki.RoleDevice: {Rate: 2, Burst: 10},
	pki.RoleProxy:  {Rate: 2000, Burst: 4000}, // three calls per enrollment
	pki.RoleAdmin:  {Rate: 50, Burst: 100},
	pki.RoleCore:   {Rate: 50, Burst: 100},
}

// Options are the server's optional parts.
type Options struct {
	// Limits per role replace DefaultLimits' for the roles they name.
	Limits map[pki.Role]Limit
	// Ready, if set, is asked by /readyz besides the registry (the broker).
	Ready func() error
	// CheckRevoked, if set, refuses a client certificate revoked at the CA
	// on every request (core/revocation's CRL checker), not only at the
	// handshake (TLSConfig).
	CheckRevoked func(*x509.Certificate) error
	// Warnings, if set, are added to a ready answer of /readyz (core's
	// certificates near their end).
	Warnings func() []string
	// Metrics is where request metrics are registered and what /metrics
	// serves; a new registry if nil.
	Metrics *prometheus.Registry
	Log     *slog.Logger
}

// Server handles core's API.
type Server struct {
	reg          *registry.Registry
	ready        func() error
	checkRevoked func(*x509.Certificate) error
	warnings     func() []string
	log          *slog.Logger
	limiter      *limiter
	edge         *httpapi.Edge
	router       *mux.Router
}

// New makes the server of reg's API.
func New(reg *registry.Registry, o Options) *Server {
	limits := map[pki.Role]Limit{}
	for role, l := range DefaultLimits {
		limits[role] = l
	}
	for role, l := range o.Limits {
		limits[role] = l
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = prometheus.NewRegistry()
	}
	log := o.Log.With("component", "api")
	s := &Server{reg: reg, ready: o.Ready, checkRevoked: o.CheckRevoked, warnings: o.Warnings, log: log, limiter: newLimiter(limits),
		edge: httpapi.NewEdge(log, o.Metrics, "prov_core", httpapi.EdgeOptions{Classify: classify, LogAttrs: identityAttr})}
	s.router = s.routes(promhttp.HandlerFor(o.Metrics, promhttp.HandlerOpts{}))
	return s
}

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// TLSConfig is the server's TLS configuration: TLS 1.3, client
// certificates from the deployment's root verified when given (health
// checks come without), identities checked at the handshake.
func TLSConfig(kp *pki.KeyPair, bundle *pki.TrustBundle, checkRevoked func(*x509.Certificate) error) *tls.Config {
	return pki.ServerTLSConfig(kp, bundle, pki.ServerOptions{ClientCerts: pki.OptionalClientCert, CheckRevoked: checkRevoked})
}

// handler is a route's handler: it gets the caller's identity, zero on
// routes that need no certificate.
type handler func(w http.ResponseWriter, r *http.Request, id pki.Identity) error

// routes registers every route of coreapi's table, each behind its
// authorization; a route without a handler, or a handler without a route,
// is a programming error found by the first test that starts a server.
func (s *Server) routes(metrics http.Handler) *mux.Router {
	handlers := map[string]handler{
		coreapi.RouteRegister.Name:      s.register,
		coreapi.RouteRecordIssued.Name:  s.recordIssued,
		coreapi.RouteListDevices.Name:   s.list,
		coreapi.RouteDevice.Name:        s.device,
		coreapi.RouteBundle.Name:        s.bundle,
		coreapi.RouteSetDeviceData.Name: s.setDeviceData,
		coreapi.RouteReprovision.Name:   s.reprovision,
		coreapi.RouteRevoke.Name:        s.revoke,
		coreapi.RouteDeviceAudit.Name:   s.deviceAudit,
		coreapi.RouteGroup.Name:         s.group,
		coreapi.RouteSetGroupData.Name:  s.setGroupData,
		coreapi.RouteGroupAudit.Name:    s.groupAudit,
		coreapi.RouteBackup.Name:        s.backup,
		coreapi.RouteHealthz.Name:       s.healthz,
		coreapi.RouteReadyz.Name:        s.readyz,
		coreapi.RouteAdmit.Name:         s.admit,
		coreapi.RouteEndAdmission.Name:  s.endAdmission,
		coreapi.RouteReport.Name:        s.report,
		coreapi.RouteFleet.Name:         s.fleet,
		coreapi.RouteStartRollout.Name:  s.startRollout,
		coreapi.RouteGroupRollouts.Name: s.groupRollouts,
		coreapi.RouteRollout.Name:       s.rollout,
		coreapi.RoutePauseRollout.Name:  s.rolloutAction(registry.ActionPause),
		coreapi.RouteResumeRollout.Name: s.rolloutAction(registry.ActionResume),
		coreapi.RouteForceRollout.Name:  s.rolloutAction(registry.ActionForce),
		coreapi.RouteAbortRollout.Name:  s.rolloutAction(registry.ActionAbort),
		coreapi.RouteAuditPrune.Name:    s.auditPrune,
		coreapi.RouteMetrics.Name: func(w http.ResponseWriter, r *http.Request, _ pki.Identity) error {
			metrics.ServeHTTP(w, r)
			return nil
		},
	}
	wrapped := make(map[string]httpapi.HandlerFunc, len(handlers))
	for _, route := range coreapi.Routes {
		if h, ok := handlers[route.Name]; ok {
			wrapped[route.Name] = s.authorize(route, h)
		}
	}
	if len(wrapped) != len(handlers) {
		panic(fmt.Sprintf("core/server: %d handlers without a route", len(handlers)-len(wrapped)))
	}
	return s.edge.Router(coreapi.Routes, wrapped)
}
