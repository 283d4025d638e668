// Package service is prov-proxy serve, the proxy's composition root: it
// builds the proxy from its configuration with one named constructor each,
// refusing to start without its provisioner key, its client certificate or
// the root (fail closed), replays the factory record (the status page;
// batch quotas are counted by core, shared by every proxy),
// waits (startupTimeout) for core and step-ca to answer as themselves, each
// pinned by its certificate, refusing to start if either does not, and
// serves the factory side until the context ends.
package service

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/renewal"
	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
	"github.com/fleetprov/prov/proxy/attest"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/config"
	"github.com/fleetprov/prov/proxy/enroll"
	"github.com/fleetprov/prov/proxy/server"
	"github.com/fleetprov/prov/proxy/status"
	"github.com/fleetprov/prov/proxy/vouch"
)

type options struct {
	listener        net.Listener
	consoleListener net.Listener
	started         func(addr string)
	wrap            func(enroll.Core, enroll.CA) (enroll.Core, enroll.CA)
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
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) error {
	p := &proxy{cfg: cfg, log: log}
	for _, f := range opts {
		f(&p.o)
	}
	return serve.Compose(ctx, []func() error{p.newIdentity, p.newConsoleCert, p.newProvisioner, p.newPolicy, p.newUpstreams, p.newConsole, p.openRecord, p.newEnroller, p.newRenewal}, p.run, p.close)
}

// proxy is the service being built, then run.
type proxy struct {
	cfg     *config.Config
	log     *slog.Logger
	o       options
	console *status.Console

	self      *serve.Self
	prov      *token.Provisioner
	policy    *vouch.Policy
	attester  *attest.Verifier // nil: no attestation.roots
	core      enroll.Core
	ca        enroll.CA
	upstreams []upstream
	viewers   []netip.Prefix
	record    *auditlog.Log
	metrics   *server.Metrics
	enroller  *enroll.Enroller
	renewer   *renewal.Renewer
	// consoleCert is console.tls, if console.listen is set.
	consoleCert *pki.KeyPair

	coreTransport *http.Transport
	coreHTTP      *http.Client
	caClient      *stepca.Client
}

// newIdentity loads the proxy's certificate, which must be a proxy's.
func (p *proxy) newIdentity() (err error) {
	p.self, err = p.cfg.LoadSelf(pki.RoleProxy)
	return err
}

// newProvisioner loads the proxy's own step-ca provisioner key.
func (p *proxy) newProvisioner() error {
	pw, err := pki.ReadPasswordFile(p.cfg.Provisioner.PasswordFile)
	if err != nil {
		return fmt.Errorf("provisioner.passwordFile: %w", err)
	}
	if p.prov, err = token.Load(stepca.ProxyProvisionerName(p.self.ID.Name), p.cfg.Provisioner.Key, pw); err != nil {
		return fmt.Errorf("provisioner.key: %w", err)
	}
	return nil
}

// newPolicy reads the vouching policy and its batch manifests, and who
// may read the status page and metrics.
func (p *proxy) newPolicy() (err error) {
	if p.policy, err = vouch.Load(p.cfg.Vouching); err != nil {
		return err
	}
	if roots := p.cfg.Attestation.Roots; roots != "" {
		if p.attester, err = attest.Load(roots, attest.Options{}); err != nil {
			return fmt.Errorf("attestation.roots: %w", err)
		}
	}
	p.viewers, err = p.cfg.StatusNetworks()
	return err
}

// newUpstreams makes the clients of core and step-ca, each of which must
// answer as itself at every handshake: core with a certificate of core's
// role in this trust domain (and, if core.names is set, one of those
// names), step-ca with its own certificate (stepca.WithCAIdentityCheck),
// so a token never reaches a server that merely holds one of the
// deployment's certificates.
func (p *proxy) newUpstreams() error {
	coreTLS := pki.ClientTLSConfig(p.self.KeyPair, p.self.Roots, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleCore}})
	verify := coreTLS.VerifyConnection
	coreTLS.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := verify(cs); err != nil {
			return notItself{err}
		}
		return p.checkCoreName(cs)
	}
	p.coreTransport = &http.Transport{TLSClientConfig: coreTLS, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}
	coreHTTP := &http.Client{Timeout: p.cfg.HTTP.UpstreamTimeout, Transport: p.coreTransport}
	p.coreHTTP = coreHTTP
	coreClient, err := coreapi.NewClient(p.cfg.Core.URL, coreHTTP)
	if err != nil {
		return fmt.Errorf("core.url: %w", err)
	}
	caClient, err := stepca.New(p.cfg.CA.URL, p.self.Roots, stepca.WithCAIdentityCheck())
	if err != nil {
		return fmt.Errorf("ca.url: %w", err)
	}
	p.upstreams = []upstream{
		{name: "core", url: p.cfg.Core.URL, health: func(ctx context.Context) error { return coreHealth(ctx, coreHTTP, p.cfg.Core.URL) }},
		{name: "step-ca", url: p.cfg.CA.URL, health: caClient.Health},
	}
	p.core, p.ca, p.caClient = coreClient, caClient, caClient
	if p.o.wrap != nil {
		p.core, p.ca = p.o.wrap(p.core, p.ca)
	}
	return nil
}

// checkCoreName holds core to core.names, if set; its role and trust
// domain are already checked.
func (p *proxy) checkCoreName(cs tls.ConnectionState) error {
	if len(p.cfg.Core.Names) == 0 {
		return nil
	}
	id, err := pki.IdentityOf(cs.PeerCertificates[0])
	if err != nil {
		return notItself{err}
	}
	if !slices.Contains(p.cfg.Core.Names, id.Name) {
		return notItself{fmt.Errorf("%s is not one of core.names %v", id, p.cfg.Core.Names)}
	}
	return nil
}

// openRecord opens the factory record, replaying it into the status page
// and the console. The batches' quotas are core's (admissions), not
// replayed from this proxy's record: another proxy may have enrolled from
// the same batch; the console's numbers are this proxy's record's.
func (p *proxy) openRecord() (err error) {
	p.record, err = auditlog.Open(p.cfg.Record.Path, p.console.Observe)
	if err != nil {
		return fmt.Errorf("record.path: %w", err)
	}
	return nil
}

// newEnroller makes the enroller and the metrics it reports to.
func (p *proxy) newEnroller() error {
	p.metrics = server.NewMetrics()
	f := p.cfg.Field
	var attester enroll.Attester
	if p.attester != nil {
		attester = p.attester // not a typed nil: the enroller tests for none
	}
	p.enroller = enroll.New(enroll.Options{Name: p.self.ID.String(), Core: p.core, CA: p.ca, Prov: p.prov, Policy: p.policy, Attester: attester,
		Record: p.record, Roots: p.self.Roots, RootPEM: p.self.RootPEM, Field: enroll.Field{CoreURL: f.CoreURL, CAURL: f.CAURL, MQTTURL: f.MQTTURL},
		Log: p.log, Observe: p.metrics.Observe, Recorded: p.console.Observe, CertLife: p.cfg.CertificateLifetime,
		// An enrollment makes up to six calls upstream while it holds its
		// place at core (admit, register, revoke, sign, record, bundle).
		Lease: max(enroll.DefaultLease, 6*p.cfg.HTTP.UpstreamTimeout), EndTimeout: p.cfg.HTTP.UpstreamTimeout})
	return nil
}

// run waits for core and step-ca to answer as themselves, then serves the
// factory side until ctx ends.
func (p *proxy) run(ctx context.Context) error {
	if err := p.awaitUpstreams(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	ln, err := serve.Listen(p.cfg.Listen, p.o.listener)
	if err != nil {
		return err
	}
	conLn, err := p.listenConsole()
	if err != nil {
		_ = ln.Close()
		return err
	}
	h := server.New(p.enroller, p.console, p.metrics, p.log, server.Options{Ready: p.ready, Timeout: p.cfg.HTTP.UpstreamTimeout, Viewers: p.viewers,
		Warnings: p.renewer.Warnings, Report: p.report})
	// New devices have no certificate yet: the factory network policy,
	// not TLS, decides who may enroll.
	tlsCfg := pki.ServerTLSConfig(p.self.KeyPair, p.self.Roots, pki.ServerOptions{ClientCerts: pki.NoClientCert})
	seq, head := p.record.Head()
	p.log.Info("prov-proxy serving", "address", ln.Addr().String(), "identity", p.self.ID.String(), "core", p.cfg.Core.URL, "ca", p.cfg.CA.URL,
		"record_seq", seq, "record_head", head)
	if p.o.started != nil {
		p.o.started(ln.Addr().String())
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.renewer.Run(gctx) })
	g.Go(func() error { return p.watchHealth(gctx) })
	g.Go(func() error {
		// The consoles' event streams end with the proxy, or its server
		// would wait for them for its whole shutdown timeout.
		<-gctx.Done()
		p.console.Feed.Close()
		return nil
	})
	g.Go(func() error {
		defer cancel() // the renewer stops with the server
		return serve.HTTPS(gctx, ln, h, tlsCfg, p.cfg.HTTP.HTTPConfig, p.log)
	})
	if conLn != nil {
		g.Go(func() error {
			defer cancel()
			return p.serveConsole(gctx, conLn, h.Console())
		})
	}
	return g.Wait()
}

// close releases the factory record.
func (p *proxy) close() error {
	if p.record == nil {
		return nil
	}
	return p.record.Close()
}
