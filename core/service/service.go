// Package service is prov-core serve: it builds every part from the
// configuration, refusing to start when a key, the CA bundle, the signer,
// the machine-id secret or the store is missing or unreadable (fail
// closed), runs the API, the broker and the notification queue together,
// and shuts down in order: stop accepting, finish requests, close the store.
package service

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/mqtt"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/revocation"
	"github.com/fleetprov/prov/core/server"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/signedimage"
	"github.com/fleetprov/prov/pki/token"
)

type options struct {
	listener  net.Listener
	storeOpts store.Options
	started   func(apiAddr, mqttAddr string)
}

// Option is a test seam.
type Option func(*options)

// WithListener serves the API on ln instead of the configured address.
func WithListener(ln net.Listener) Option { return func(o *options) { o.listener = ln } }

// WithStoreOptions passes options (fault injection, a clock) to the store.
func WithStoreOptions(so store.Options) Option { return func(o *options) { o.storeOpts = so } }

// WithStarted is called with the addresses once everything listens.
func WithStarted(f func(apiAddr, mqttAddr string)) Option { return func(o *options) { o.started = f } }

// Run runs core until ctx ends.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) (err error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	bundle, err := pki.LoadTrustBundle(cfg.TrustBundle)
	if err != nil {
		return fmt.Errorf("trustBundle: %w", err)
	}
	kp, err := pki.LoadKeyPair(cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	self, err := bundle.Verify(kp.Chain(), pki.VerifyOptions{KeyUsage: pki.RoleCore.ExtKeyUsage(), Roles: []pki.Role{pki.RoleCore}})
	if err != nil {
		return fmt.Errorf("tls: core's certificate: %w", err)
	}
	signer, err := signedimage.LoadSigner(cfg.Signer.Cert, cfg.Signer.Key)
	if err != nil {
		return fmt.Errorf("signer: %w", err)
	}
	if _, err := bundle.Verify(append([]*x509.Certificate{signer.Certificate()}, kp.Chain()[1:]...), pki.VerifyOptions{KeyUsage: pki.RoleSigner.ExtKeyUsage(), Roles: []pki.Role{pki.RoleSigner}}); err != nil {
		return fmt.Errorf("signer: its certificate does not verify under the trust bundle: %w", err)
	}
	rules := imagespec.Rules{AllowedPrefixes: cfg.Policy.AllowedPrefixes}
	pol, err := policy.New(cfg.Policy.Groups, rules, cfg.Policy.MachineIDSecretFile)
	if err != nil {
		return err
	}
	so := o.storeOpts
	so.LockTimeout = cfg.Store.LockTimeout
	st, err := store.Open(cfg.Store.Path, so)
	if err != nil {
		return fmt.Errorf("store.path: %w", err)
	}
	defer func() {
		if cerr := st.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close store: %w", cerr)
		}
	}()
	for name, data := range pol.Groups() {
		g, created, err := st.EnsureGroup(name, data, "config")
		if err != nil {
			return fmt.Errorf("group %s: %w", name, err)
		}
		if !created && g.Version == 0 && !maps.Equal(g.Data, data) {
			log.Warn("the configured data of a group differs from the registry's; the registry wins. Change it with prov-core admin set --group",
				"group", name)
		}
	}
	cache := bundlecache.New(signer, rules, cfg.Images.CacheBytes)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)

	var notifier server.Notifier
	var ready func() error
	mqttAddr := ""
	if cfg.MQTT.External.URL != "" {
		ext, err := mqtt.NewExternal(gctx, cfg.MQTT.External.URL, cfg.MQTT.External.ClientID,
			pki.ClientTLSConfig(kp, bundle, pki.ClientOptions{}), log)
		if err != nil {
			return err
		}
		notifier, ready, mqttAddr = ext, ext.Ready, cfg.MQTT.External.URL
	} else {
		brokerTLS := pki.ServerTLSConfig(kp, bundle, pki.ServerOptions{ClientRoles: []pki.Role{pki.RoleDevice, pki.RoleCore}})
		b, err := mqtt.NewBroker(cfg.MQTT.Embedded.Listen, brokerTLS, log)
		if err != nil {
			return err
		}
		g.Go(func() error { return b.Run(gctx) })
		notifier, ready, mqttAddr = b, b.Ready, b.Addr() // the bound port, also when the configuration says 0
	}

	var checkRevoked func(*x509.Certificate) error
	var srvOpts []server.Option
	if cfg.CA.URL != "" {
		chain := kp.Chain()[1:]
		if len(chain) == 0 {
			return errors.New("ca: core's certificate file holds no intermediate to check the CRL with")
		}
		crl := revocation.New(cfg.CA.URL, chain[0], bundle, cfg.CA.CRLInterval, log)
		checkRevoked = crl.Check
		g.Go(func() error { return crl.Run(gctx) })
		if cfg.CA.RevokerKey != "" {
			r, err := newRevoker(cfg)
			if err != nil {
				return err
			}
			srvOpts = append(srvOpts, server.WithRevoker(r))
		}
	}
	limits := map[pki.Role]server.Limit{}
	maps.Copy(limits, server.DefaultLimits)
	for role, l := range cfg.Limits {
		limits[pki.Role(role)] = server.Limit{Rate: l.Rate, Burst: l.Burst}
	}
	srv := server.New(server.Config{TrustDomain: bundle.TrustDomain(), Limits: limits, DefaultGroup: cfg.Policy.DefaultGroup},
		st, pol, cache, notifier, log, append(srvOpts, server.WithReadiness(ready))...)

	ln := o.listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	ln = limitListener(ln, cfg.HTTP.MaxConnections)
	httpSrv := &http.Server{
		Handler:           srv,
		TLSConfig:         server.TLSConfig(kp, bundle, checkRevoked),
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		WriteTimeout:      cfg.HTTP.WriteTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		MaxHeaderBytes:    cfg.HTTP.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error {
		if err := httpSrv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// Shutdown gets its own context: the parent one has ended.
		sctx, scancel := context.WithTimeout(context.Background(), cfg.HTTP.ShutdownTimeout)
		defer scancel()
		return httpSrv.Shutdown(sctx)
	})
	log.Info("prov-core serving", "api", ln.Addr().String(), "mqtt", mqttAddr, "identity", self.String(),
		"signer", signer.Identity().String(), "store", cfg.Store.Path, "groups", len(pol.Groups()))
	if o.started != nil {
		o.started(ln.Addr().String(), mqttAddr)
	}
	return g.Wait()
}

// caRevoker revokes at step-ca with core's revoke-only provisioner.
type caRevoker struct {
	prov   *token.Provisioner
	client *ca.Client
}

func newRevoker(cfg *config.Config) (*caRevoker, error) {
	pw, err := pki.ReadPasswordFile(cfg.CA.RevokerPasswordFile)
	if err != nil {
		return nil, fmt.Errorf("ca.revokerPasswordFile: %w", err)
	}
	prov, err := token.Load(deployment.RevokerProvisionerName, cfg.CA.RevokerKey, pw)
	if err != nil {
		return nil, fmt.Errorf("ca.revokerKey: %w", err)
	}
	client, err := ca.NewClient(cfg.CA.URL, cfg.TrustBundle)
	if err != nil {
		return nil, fmt.Errorf("ca.url: %w", err)
	}
	return &caRevoker{prov: prov, client: client}, nil
}

func (r *caRevoker) Revoke(ctx context.Context, certSerial, reason string) error {
	tok, err := r.prov.RevokeToken(r.client.RevokeAudience(), certSerial, time.Now())
	if err != nil {
		return err
	}
	return r.client.Revoke(ctx, certSerial, tok, reason)
}

// limitListener accepts at most n connections at once, so a flood of
// handshakes cannot grow goroutines and memory without bound.
func limitListener(ln net.Listener, n int) net.Listener {
	return &limited{Listener: ln, sem: make(chan struct{}, n)}
}

type limited struct {
	net.Listener
	sem chan struct{}
}

func (l *limited) Accept() (net.Conn, error) {
	l.sem <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
