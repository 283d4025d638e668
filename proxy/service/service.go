// Package service is prov-proxy serve: it builds the proxy from its
// configuration, refusing to start without its provisioner key, its client
// certificate or the root (fail closed), replays the factory record (quotas,
// status page), and serves the factory side until the context ends.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/config"
	"github.com/fleetprov/prov/proxy/enroll"
	"github.com/fleetprov/prov/proxy/server"
	"github.com/fleetprov/prov/proxy/vouch"
)

type options struct {
	listener net.Listener
	started  func(addr string)
	wrap     func(enroll.Core, enroll.CA) (enroll.Core, enroll.CA)
}

// Option is a test seam.
type Option func(*options)

// WithListener serves on ln.
func WithListener(ln net.Listener) Option { return func(o *options) { o.listener = ln } }

// WithStarted is called with the address once the proxy serves.
func WithStarted(f func(addr string)) Option { return func(o *options) { o.started = f } }

// WithUpstreams wraps the real core and CA clients (fault injection).
func WithUpstreams(f func(enroll.Core, enroll.CA) (enroll.Core, enroll.CA)) Option {
	return func(o *options) { o.wrap = f }
}

// Run runs the proxy until ctx ends.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) (err error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	roots, err := pki.LoadTrustBundle(cfg.TrustBundle)
	if err != nil {
		return fmt.Errorf("trustBundle: %w", err)
	}
	rootPEM, err := os.ReadFile(cfg.TrustBundle)
	if err != nil {
		return fmt.Errorf("trustBundle: %w", err)
	}
	kp, err := pki.LoadKeyPair(cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	self, err := roots.Verify(kp.Chain(), pki.VerifyOptions{KeyUsage: pki.RoleProxy.ExtKeyUsage(), Roles: []pki.Role{pki.RoleProxy}})
	if err != nil {
		return fmt.Errorf("tls: the proxy's certificate: %w", err)
	}
	pw, err := pki.ReadPasswordFile(cfg.Provisioner.PasswordFile)
	if err != nil {
		return fmt.Errorf("provisioner.passwordFile: %w", err)
	}
	prov, err := token.Load(stepca.ProxyProvisionerName(self.Name), cfg.Provisioner.Key, pw)
	if err != nil {
		return fmt.Errorf("provisioner.key: %w", err)
	}
	policy, err := vouch.Load(cfg.Vouching)
	if err != nil {
		return err
	}
	coreTLS := pki.ClientTLSConfig(kp, roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleCore}})
	coreClient, err := coreapi.NewClient(cfg.Core.URL, &http.Client{Timeout: cfg.HTTP.UpstreamTimeout,
		Transport: &http.Transport{TLSClientConfig: coreTLS, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}})
	if err != nil {
		return fmt.Errorf("core.url: %w", err)
	}
	caClient, err := stepca.New(cfg.CA.URL, roots)
	if err != nil {
		return fmt.Errorf("ca.url: %w", err)
	}
	var core enroll.Core = coreClient
	var caUp enroll.CA = caClient
	if o.wrap != nil {
		core, caUp = o.wrap(core, caUp)
	}

	var replayed []auditlog.Record
	record, err := auditlog.Open(cfg.Record.Path, func(r auditlog.Record) {
		if r.Result == auditlog.Enrolled && r.Batch != "" {
			policy.Replay(r.Batch, r.Serial)
		}
		replayed = append(replayed, r)
	})
	if err != nil {
		return fmt.Errorf("record.path: %w", err)
	}
	defer func() {
		if cerr := record.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	metrics := server.NewMetrics()
	e := enroll.New(enroll.Options{Name: self.String(), Core: core, CA: caUp, Prov: prov, Policy: policy, Record: record,
		Roots: roots, RootPEM: rootPEM, Field: enroll.Field{CoreURL: cfg.Field.CoreURL, CAURL: cfg.Field.CAURL, MQTTURL: cfg.Field.MQTTURL},
		Log: log, Observe: metrics.Observe, CertLife: cfg.CertificateLifetime})
	for _, r := range replayed {
		e.Replay(r)
	}
	ready := func() error {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := caClient.Health(rctx); err != nil {
			return errors.New("step-ca does not answer")
		}
		return nil
	}
	srv := server.New(e, metrics, log, ready, cfg.HTTP.UpstreamTimeout)
	tlsCfg := pki.ServerTLSConfig(kp, roots, pki.ServerOptions{})
	tlsCfg.ClientAuth, tlsCfg.ClientCAs, tlsCfg.VerifyConnection = 0, nil, nil // new devices have no certificate yet

	ln := o.listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	httpSrv := &http.Server{Handler: srv, TLSConfig: tlsCfg, ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout, ReadTimeout: cfg.HTTP.ReadTimeout,
		WriteTimeout: cfg.HTTP.WriteTimeout, IdleTimeout: cfg.HTTP.IdleTimeout, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := httpSrv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.ShutdownTimeout)
		defer cancel()
		return httpSrv.Shutdown(sctx)
	})
	seq, head := record.Head()
	log.Info("prov-proxy serving", "address", ln.Addr().String(), "identity", self.String(), "core", cfg.Core.URL, "ca", cfg.CA.URL,
		"record_seq", seq, "record_head", head)
	if o.started != nil {
		o.started(ln.Addr().String())
	}
	return g.Wait()
}
