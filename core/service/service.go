// Package service is prov-core serve, core's composition root: it builds
// every part from the configuration with one named constructor each,
// refusing to start when a key, the CA bundle, the signer, the machine-id
// secret or the store is missing or unreadable (fail closed); runs the API,
// the broker, the CRL poller, the change worker and the queue of
// revocations at the CA together; and shuts
// down in order: stop accepting, finish requests, close the store.
package service

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/fleetprov/prov/core/bundlecache"
	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/mqtt"
	"github.com/fleetprov/prov/core/notify"
	"github.com/fleetprov/prov/core/policy"
	"github.com/fleetprov/prov/core/registry"
	"github.com/fleetprov/prov/core/revocation"
	"github.com/fleetprov/prov/core/server"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/renewal"
	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
	"github.com/fleetprov/prov/pki/stepca"
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
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, opts ...Option) error {
	c := &core{cfg: cfg, log: log, metrics: prometheus.NewRegistry()}
	for _, f := range opts {
		f(&c.o)
	}
	return serve.Compose(ctx, []func() error{c.newIdentity, c.newSigner, c.newPolicy, func() error { return c.openStore(ctx) }, c.seedGroups, c.newBundles, c.newRevocation, c.newRenewal}, c.run, c.close)
}

// core is the service being built, then run.
type core struct {
	cfg     *config.Config
	log     *slog.Logger
	o       options
	metrics *prometheus.Registry

	self     *serve.Self
	signer   *signedimage.Signer
	rules    imagespec.Rules
	policy   *policy.Policy
	store    store.Store
	bundles  *bundlecache.Cache
	worker   *notify.Worker
	registry *registry.Registry
	crl      *revocation.Checker
	revoker  registry.Revoker
	broker   *mqtt.Broker // the embedded one; nil with an external broker
	renewer  *renewal.Renewer
}

// newIdentity loads core's certificate, which must be core's.
func (c *core) newIdentity() (err error) {
	c.self, err = c.cfg.LoadSelf(pki.RoleCore)
	return err
}

// newSigner loads the image signer, whose certificate must chain to the
// same root through core's intermediate.
func (c *core) newSigner() error {
	signer, err := signedimage.LoadSigner(c.cfg.Signer.Cert, c.cfg.Signer.Key)
	if err != nil {
		return fmt.Errorf("signer: %w", err)
	}
	chain := append([]*x509.Certificate{signer.Certificate()}, c.self.KeyPair.Chain()[1:]...)
	if _, err := c.self.Roots.Verify(chain, pki.VerifyOptions{KeyUsage: pki.RoleSigner.ExtKeyUsage(), Roles: []pki.Role{pki.RoleSigner}}); err != nil {
		return fmt.Errorf("signer: its certificate does not verify under the trust bundle: %w", err)
	}
	c.signer = signer
	return nil
}

// newPolicy reads the groups' templates and the machine-id secret.
func (c *core) newPolicy() (err error) {
	c.rules = imagespec.Rules{AllowedPrefixes: c.cfg.Policy.AllowedPrefixes}
	c.policy, err = policy.New(c.cfg.Policy.Groups, c.rules, c.cfg.Policy.MachineIDSecretFile)
	return err
}

// openStore opens the registry's database, on the configured engine
// (PostgreSQL: migrating its schema first); close releases it.
func (c *core) openStore(ctx context.Context) error {
	so := c.o.storeOpts
	// Through a variable of its own per engine: a failed Open's nil
	// pointer in c.store would be a non-nil Store that close then calls.
	switch c.cfg.Store.Engine {
	case config.EnginePostgres:
		st, err := postgres.Open(ctx, c.cfg.Store.URL, postgres.Options{Now: so.Now, BeforeCommit: so.BeforeCommit, SingleCore: c.cfg.Store.SingleCore})
		if err != nil {
			// Not the URL itself: it may hold a password.
			return fmt.Errorf("store.url: %w", err)
		}
		c.store = st
	default:
		so.LockTimeout = c.cfg.Store.LockTimeout
		st, err := store.Open(c.cfg.Store.Path, so)
		if err != nil {
			return fmt.Errorf("store.path: %w", err)
		}
		c.store = st
	}
	c.log.Info("store open", "engine", c.cfg.Store.Engine)
	return nil
}

// seedGroups creates the configured groups the store does not have yet;
// after that the registry's data wins over the file's.
func (c *core) seedGroups() error {
	for name, data := range c.policy.Groups() {
		g, created, err := c.store.EnsureGroup(name, data, "config")
		if err != nil {
			return fmt.Errorf("group %s: %w", name, err)
		}
		if !created && g.Version == 0 && !maps.Equal(g.Data, data) {
			c.log.Warn("the configured data of a group differs from the registry's; the registry wins. Change it with prov-core admin set --group",
				"group", name)
		}
	}
	return nil
}

// newBundles makes the cache of signed bundles, and the process metrics.
func (c *core) newBundles() error {
	c.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.bundles = bundlecache.New(c.signer, c.rules, c.cfg.Images.CacheBytes)
	c.metrics.MustRegister(c.bundles.Collectors()...)
	return nil
}

// newRegistry makes the change worker, publishing with notifier, and the
// registry that tells it of changes: in memory, unless the engine writes
// each change's job itself (store.Outbox: several cores share the jobs).
func (c *core) newRegistry(notifier notify.Notifier) {
	c.worker = notify.New(c.store, c.bundles, notifier, 0, c.log, c.metrics)
	c.worker.SetPace(notify.Pace{Builders: c.cfg.Images.Builders, BuildsPerSecond: c.cfg.Images.BuildsPerSecond})
	o := registry.Options{DefaultGroup: c.cfg.Policy.DefaultGroup, Revoker: c.revoker, RolloutTick: c.cfg.Rollouts.Tick, Metrics: c.metrics, Log: c.log}
	if c.broker != nil {
		o.Sessions = c.broker
	}
	var changes registry.Changes = c.worker
	if _, ok := c.store.(store.Outbox); ok {
		changes = c.worker.OutboxChanges()
	}
	c.registry = registry.New(c.store, c.policy, c.bundles, changes, o)
}

// runWorker acts on changes: the shared outbox's jobs, or the in-memory
// queue.
func (c *core) runWorker(ctx context.Context) error {
	if box, ok := c.store.(store.Outbox); ok {
		return c.worker.RunOutbox(ctx, box)
	}
	return c.worker.Run(ctx)
}

// newRevocation sets up the CA's CRL (checked at every handshake) and,
// with a revoker key, core's revocations at the CA.
func (c *core) newRevocation() error {
	if c.cfg.CA.URL == "" {
		return nil
	}
	chain := c.self.KeyPair.Chain()[1:]
	if len(chain) == 0 {
		return errors.New("ca: core's certificate file holds no intermediate to check the CRL with")
	}
	client, err := stepca.New(c.cfg.CA.URL, c.self.Roots)
	if err != nil {
		return fmt.Errorf("ca.url: %w", err)
	}
	c.crl = revocation.New(client, chain[0], c.cfg.CA.CRLInterval, c.log)
	if c.cfg.CA.RevokerKey != "" {
		r, err := newRevoker(c.cfg, client)
		if err != nil {
			return err
		}
		c.revoker = r
	}
	return nil
}

// newBroker binds the embedded broker (startBroker runs it), or connects
// to the external one; it returns the notifier, its readiness and its
// address. The embedded broker checks the CA's CRL at the handshake.
func (c *core) newBroker(ctx context.Context) (notify.Notifier, func() error, string, error) {
	if ext := c.cfg.MQTT.External; ext.URL != "" {
		e, err := mqtt.NewExternal(ctx, ext.URL, ext.ClientID, pki.ClientTLSConfig(c.self.KeyPair, c.self.Roots, pki.ClientOptions{}), c.log)
		if err != nil {
			return nil, nil, "", err
		}
		return e, e.Ready, ext.URL, nil
	}
	checkRevoked := c.checkRevoked()
	tlsCfg := pki.ServerTLSConfig(c.self.KeyPair, c.self.Roots, pki.ServerOptions{ClientRoles: []pki.Role{pki.RoleDevice, pki.RoleCore},
		CheckRevoked: checkRevoked})
	b, err := mqtt.NewBroker(c.cfg.MQTT.Embedded.Listen, tlsCfg, checkRevoked, c.log)
	if err != nil {
		return nil, nil, "", err
	}
	c.broker = b
	return b, b.Ready, b.Addr(), nil
}

// startBroker runs the embedded broker once the registry that admits its
// devices exists; the CRL closes the sessions of what it newly lists.
func (c *core) startBroker(ctx context.Context, g *errgroup.Group) {
	if c.broker == nil {
		return
	}
	c.broker.SetDevices(c.registry)
	if c.crl != nil {
		c.crl.OnNewRevocations(c.broker.CloseRevoked)
	}
	g.Go(func() error { return c.broker.Run(ctx) })
}

// checkRevoked is the CA's CRL check, or nil without a CA.
func (c *core) checkRevoked() func(*x509.Certificate) error {
	if c.crl == nil {
		return nil
	}
	return c.crl.Check
}

// run serves until ctx ends or a part fails.
func (c *core) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	notifier, ready, mqttAddr, err := c.newBroker(gctx)
	if err != nil {
		cancel()
		return errors.Join(err, g.Wait())
	}
	c.newRegistry(notifier)
	c.startBroker(gctx, g)
	g.Go(func() error { return c.registry.RunCARevocations(gctx) })
	g.Go(func() error { return c.registry.RunRollouts(gctx) })
	if keep := c.cfg.Audit.Retention.Duration(); keep > 0 {
		rt := registry.Retention{Keep: keep, Every: c.cfg.Audit.PruneEvery.Duration(), Actor: c.self.ID.String()}
		g.Go(func() error { return c.registry.RunAuditRetention(gctx, rt) })
	}
	limits := map[pki.Role]server.Limit{}
	for role, l := range c.cfg.Limits {
		limits[pki.Role(role)] = server.Limit{Rate: l.Rate, Burst: l.Burst}
	}
	api := server.New(c.registry, server.Options{Limits: limits, Ready: ready, CheckRevoked: c.checkRevoked(), Warnings: c.renewer.Warnings, Metrics: c.metrics, Log: c.log})
	ln, err := serve.Listen(c.cfg.Listen, c.o.listener)
	if err != nil {
		cancel()
		return errors.Join(err, g.Wait())
	}
	checkRevoked := c.checkRevoked()
	if c.crl != nil {
		g.Go(func() error { return c.crl.Run(gctx) })
	}
	g.Go(func() error { return c.runWorker(gctx) })
	g.Go(func() error { return c.renewer.Run(gctx) })
	g.Go(func() error {
		return serve.HTTPS(gctx, ln, api, server.TLSConfig(c.self.KeyPair, c.self.Roots, checkRevoked), c.cfg.HTTP, c.log)
	})
	c.log.Info("prov-core serving", "api", ln.Addr().String(), "mqtt", mqttAddr, "identity", c.self.ID.String(),
		"signer", c.signer.Identity().String(), "store", c.cfg.Store.Path, "groups", len(c.policy.Groups()))
	if c.o.started != nil {
		c.o.started(ln.Addr().String(), mqttAddr)
	}
	return g.Wait()
}

// close releases what was opened.
func (c *core) close() error {
	if c.store == nil {
		return nil
	}
	if err := c.store.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}
