// Package renewal keeps a service's own certificates alive: core's and the
// proxy's TLS pair and core's image signer renew themselves at step-ca
// after a fraction of their life (two thirds by default), over mTLS with
// the certificate being renewed, as the devices do. The new chain is
// checked (same identity, same key, same names, an end no sooner), written
// atomically over the configured certificate file (the key stays) and
// loaded into the pki.KeyPair every TLS configuration reads at each
// handshake, so listeners and clients take it up with no restart and no
// connection dropped. A failed attempt is retried with a jittered,
// doubling back-off.
//
// Whether renewal is on or off, each certificate's end is a metric
// (<namespace>_certificate_expiry_seconds{cert}), and once less than a set
// fraction of its life is left it is a warning in /readyz and in the logs.
package renewal

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/fleetprov/prov/internal/atomicfile"
	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
)

// attemptTimeout bounds one renewal at step-ca.
const attemptTimeout = 30 * time.Second

// Cert is one certificate of the service.
type Cert struct {
	// Name labels it in metrics, logs and warnings: tls, signer.
	Name string
	// Role is the identity's role; the renewed certificate must keep it.
	// Empty: a certificate for browsers alone (the proxy's console), with
	// no identity; the renewed one must still name none
	// (pki.VerifyWebServer) and keep its CN.
	Role pki.Role
	// KeyPair is the pair in use: presented to step-ca, and reloaded from
	// CertFile once the new chain is written there.
	KeyPair *pki.KeyPair
	// CertFile is the chain file (PEM, leaf first) the pair was loaded
	// from; the renewed chain replaces it.
	CertFile string
	// Installed, if set, is told of each new chain once the pair holds it
	// (the image signer rebuilds itself from it).
	Installed func(chain []*x509.Certificate) error
}

// Options are the renewer's surroundings.
type Options struct {
	// Namespace prefixes the metrics' names: prov_core, prov_proxy.
	Namespace string
	// CAURL is step-ca's; Roots the deployment's root.
	CAURL string
	Roots *pki.TrustBundle
	// CAOptions are added to the step-ca client's (an identity check of
	// the CA, say); the client certificate is the renewer's to set.
	CAOptions []stepca.Option
	Log       *slog.Logger
}

// Renewer renews a service's certificates; Run does the work.
type Renewer struct {
	cfg   serve.RenewalConfig
	o     Options
	certs []*watched

	expiry   *prometheus.GaugeVec
	failing  *prometheus.GaugeVec
	renewals *prometheus.CounterVec
}

// watched is a certificate and how its renewal goes.
type watched struct {
	Cert
	renewing sync.Mutex // one attempt at a time

	mu       sync.Mutex
	failures int       // attempts failed in a row
	since    time.Time // when the first of them failed
	last     time.Time // the last renewal
}

// New makes a renewer of certs; nothing happens until Run.
func New(cfg serve.RenewalConfig, certs []Cert, o Options) *Renewer {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	o.Log = o.Log.With("component", "renewal")
	r := &Renewer{cfg: cfg, o: o,
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: o.Namespace + "_certificate_expiry_seconds",
			Help: "When the service's own certificate ends (Unix time), by certificate (tls, signer).",
		}, []string{"cert"}),
		failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: o.Namespace + "_certificate_renewal_failures",
			Help: "Renewals of the certificate at step-ca that failed in a row (0: the last one worked, or none was due).",
		}, []string{"cert"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: o.Namespace + "_certificate_renewals_total",
			Help: "Renewals of the service's own certificates at step-ca, by certificate and result (renewed, failed).",
		}, []string{"cert", "result"}),
	}
	for _, c := range certs {
		w := &watched{Cert: c}
		r.certs = append(r.certs, w)
		r.expiry.WithLabelValues(c.Name).Set(float64(c.KeyPair.Leaf().NotAfter.Unix()))
		r.failing.WithLabelValues(c.Name).Set(0)
	}
	return r
}

// Collectors are the renewer's metrics.
func (r *Renewer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{r.expiry, r.failing, r.renewals}
}

// Run watches every certificate, renewing each when due if renewal is on,
// until ctx ends.
func (r *Renewer) Run(ctx context.Context) error {
	var g errgroup.Group
	for _, w := range r.certs {
		g.Go(func() error { r.watch(ctx, w); return nil })
	}
	return g.Wait()
}

// watch is one certificate's loop.
func (r *Renewer) watch(ctx context.Context, w *watched) {
	leaf := w.KeyPair.Leaf()
	r.o.Log.Info("watching the certificate", "cert", w.Name, "not_after", leaf.NotAfter.UTC(), "renewal", r.cfg.On(),
		"renew_due", r.due(leaf).UTC())
	if r.cfg.On() && !renewable(leaf) {
		r.o.Log.Error("certificate cannot be renewed at step-ca: it lacks the clientAuth usage; issue it once more (prov-pki issue --force)",
			"cert", w.Name, "file", w.CertFile, "not_after", leaf.NotAfter.UTC())
	}
	backoff := r.cfg.Backoff.Min
	for {
		timer := time.NewTimer(time.Until(r.next(w, backoff)))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if !r.cfg.On() {
			r.warnOff(w)
			continue
		}
		if err := r.Renew(ctx, w.Name); err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(2*backoff, r.cfg.Backoff.Max)
			continue
		}
		backoff = r.cfg.Backoff.Min
	}
}

// next is when to look at w again: when it is due (after a jittered
// back-off while renewals fail); with renewal off, when it enters its last
// WarnLeft of life, and a few times in that last part.
func (r *Renewer) next(w *watched, backoff time.Duration) time.Time {
	leaf := w.KeyPair.Leaf()
	now := time.Now()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if !r.cfg.On() {
		if warn := r.warnFrom(leaf); now.Before(warn) {
			return warn
		}
		return now.Add(max(time.Duration(float64(life)*r.cfg.WarnLeft/4), time.Minute))
	}
	if w.failuresInRow() == 0 {
		// step-ca backdates what it issues: with a small At, the next due
		// time may be past at once. Never renew more often than every
		// twentieth of a life.
		due := r.due(leaf)
		if soonest := w.lastRenewal().Add(life / 20); due.Before(soonest) {
			return soonest
		}
		return due
	}
	// Never wait longer than a quarter of what is left: near the end,
	// try more often than the back-off alone would.
	d := min(backoff, max(leaf.NotAfter.Sub(now)/4, r.cfg.Backoff.Min))
	return now.Add(d/2 + rand.N(d/2+1)) //nolint:gosec // jitter, not a secret
}

// due is when leaf is renewed: after At of its life, less a jitter of up to
// a hundredth of it so that replicas started together do not renew in step.
func (r *Renewer) due(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(life)*r.cfg.At) - rand.N(life/100+1)) //nolint:gosec // jitter
}

// warnFrom is when leaf enters the last WarnLeft of its life.
func (r *Renewer) warnFrom(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotAfter.Add(-time.Duration(float64(life) * r.cfg.WarnLeft))
}

// Renew renews the named certificate now: one attempt at step-ca, the new
// chain checked, written and loaded. Run calls it when due.
func (r *Renewer) Renew(ctx context.Context, name string) error {
	i := slices.IndexFunc(r.certs, func(w *watched) bool { return w.Name == name })
	if i < 0 {
		return fmt.Errorf("renew: no certificate %q", name)
	}
	w := r.certs[i]
	w.renewing.Lock()
	defer w.renewing.Unlock()
	old := w.KeyPair.Leaf()
	err := r.renew(ctx, w)
	if err != nil && ctx.Err() != nil {
		return err // stopping: not a failure of step-ca's
	}
	if err != nil {
		n, since := w.failed()
		r.failing.WithLabelValues(w.Name).Set(float64(n))
		r.renewals.WithLabelValues(w.Name, "failed").Inc()
		left := time.Until(old.NotAfter).Round(time.Second)
		if time.Now().Before(r.warnFrom(old)) {
			r.o.Log.Warn("certificate renewal failed; retrying", "cert", w.Name, "err", err, "failures", n, "not_after", old.NotAfter.UTC())
		} else {
			r.o.Log.Error("certificate expires soon and its renewal keeps failing", "cert", w.Name, "err", err, "failures", n,
				"failing_since", since.UTC(), "not_after", old.NotAfter.UTC(), "left", left.String())
		}
		return err
	}
	w.renewed()
	leaf := w.KeyPair.Leaf()
	r.failing.WithLabelValues(w.Name).Set(0)
	r.renewals.WithLabelValues(w.Name, "renewed").Inc()
	r.expiry.WithLabelValues(w.Name).Set(float64(leaf.NotAfter.Unix()))
	r.o.Log.Info("certificate renewed", "cert", w.Name, "serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter.UTC(),
		"renew_due", r.due(leaf).UTC())
	return nil
}

// renew is one attempt.
func (r *Renewer) renew(ctx context.Context, w *watched) error {
	old := w.KeyPair.Leaf()
	if !renewable(old) {
		// step-ca renews over mTLS or with a token signed by the
		// certificate, and checks it as a TLS client certificate either way.
		return fmt.Errorf("%w: the %s certificate %s lacks the clientAuth usage step-ca's renewal needs; issue it once more with prov-pki issue --force",
			ErrNotRenewable, w.Name, w.CertFile)
	}
	client, err := stepca.New(r.o.CAURL, r.o.Roots, append(slices.Clone(r.o.CAOptions), stepca.WithClientCertificate(w.KeyPair))...)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	chain, err := client.Renew(ctx)
	if err != nil {
		return err
	}
	if err := r.check(w, old, chain); err != nil {
		return err
	}
	if err := sameKeyOnDisk(w.CertFile, old); err != nil {
		return err
	}
	var out bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // a bytes.Buffer does not fail
	}
	mode := os.FileMode(0o644) // public, as prov-pki writes it
	if fi, err := os.Stat(w.CertFile); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := atomicfile.WriteFile(w.CertFile, out.Bytes(), mode); err != nil {
		return fmt.Errorf("store the renewed %s certificate: %w", w.Name, err)
	}
	if err := w.KeyPair.Reload(); err != nil {
		return fmt.Errorf("load the renewed %s certificate from %s: %w", w.Name, w.CertFile, err)
	}
	if w.Installed != nil {
		if err := w.Installed(chain); err != nil {
			return fmt.Errorf("install the renewed %s certificate: %w", w.Name, err)
		}
	}
	return nil
}

// sameKeyOnDisk refuses to write over a certificate file that holds
// another key's certificate now: the identity was issued again (prov-pki
// issue --force) while the service ran, and the key file beside it is the
// new one; the service takes both up when restarted.
func sameKeyOnDisk(certFile string, inUse *x509.Certificate) error {
	data, err := os.ReadFile(certFile) //nolint:gosec // the operator's configuration
	if err != nil {
		return fmt.Errorf("read %s before replacing it: %w", certFile, err)
	}
	certs, err := pki.ParseCertificates(data)
	if err != nil {
		return fmt.Errorf("read %s before replacing it: %w", certFile, err)
	}
	if !bytes.Equal(certs[0].RawSubjectPublicKeyInfo, inUse.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("%w: %s now holds a certificate for another key; restart the service to load it", ErrReplaced, certFile)
	}
	return nil
}

// renewable says whether step-ca can renew c: it checks a renewing
// certificate as a TLS client's.
func renewable(c *x509.Certificate) bool {
	return slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
}

// check accepts only a renewal of old: a chain to the root with the same
// identity, role and usage (for a certificate of no identity: still none,
// the same CN), the same key and names, ending no sooner.
func (r *Renewer) check(w *watched, old *x509.Certificate, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: no certificate", ErrBadRenewal)
	}
	leaf := chain[0]
	if w.Role == "" {
		if err := r.o.Roots.VerifyWebServer(chain, pki.HostNames(old), time.Time{}); err != nil {
			return fmt.Errorf("%w: %w", ErrBadRenewal, err)
		}
		if leaf.Subject.CommonName != old.Subject.CommonName {
			return fmt.Errorf("%w: for %q, not %q", ErrBadRenewal, leaf.Subject.CommonName, old.Subject.CommonName)
		}
	} else {
		want, err := pki.IdentityOf(old)
		if err != nil {
			return err
		}
		got, err := r.o.Roots.Verify(chain, pki.VerifyOptions{KeyUsage: w.Role.ExtKeyUsage(), Roles: []pki.Role{w.Role}})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadRenewal, err)
		}
		if got != want {
			return fmt.Errorf("%w: for %s, not %s", ErrBadRenewal, got, want)
		}
	}
	switch {
	case !bytes.Equal(leaf.RawSubjectPublicKeyInfo, old.RawSubjectPublicKeyInfo):
		return fmt.Errorf("%w: for another key", ErrBadRenewal)
	case !slices.Equal(leaf.DNSNames, old.DNSNames) || !slices.EqualFunc(leaf.IPAddresses, old.IPAddresses, net.IP.Equal):
		return fmt.Errorf("%w: names %v %v, not %v %v", ErrBadRenewal, leaf.DNSNames, leaf.IPAddresses, old.DNSNames, old.IPAddresses)
	case leaf.NotAfter.Before(old.NotAfter):
		return fmt.Errorf("%w: it ends %s, before the one it renews", ErrBadRenewal, leaf.NotAfter.UTC())
	}
	return nil
}

// warnOff logs, with renewal off, a certificate in the last part of its
// life.
func (r *Renewer) warnOff(w *watched) {
	leaf := w.KeyPair.Leaf()
	if time.Now().Before(r.warnFrom(leaf)) {
		return
	}
	r.o.Log.Warn("certificate expires soon and renewal is off: issue the next one (prov-pki issue --force) and restart",
		"cert", w.Name, "not_after", leaf.NotAfter.UTC(), "left", time.Until(leaf.NotAfter).Round(time.Second).String())
}

// Warnings describe the certificates in the last WarnLeft of their life,
// for /readyz: short, and without the errors behind them (they are in the
// logs), since anyone may ask.
func (r *Renewer) Warnings() []string {
	var out []string
	now := time.Now()
	for _, w := range r.certs {
		leaf := w.KeyPair.Leaf()
		if now.Before(r.warnFrom(leaf)) {
			continue
		}
		what := fmt.Sprintf("the %s certificate", w.Name)
		if now.After(leaf.NotAfter) {
			out = append(out, fmt.Sprintf("%s expired at %s", what, leaf.NotAfter.UTC().Format(time.RFC3339)))
			continue
		}
		ends := fmt.Sprintf("%s ends at %s (in %s)", what, leaf.NotAfter.UTC().Format(time.RFC3339), leaf.NotAfter.Sub(now).Round(time.Second))
		switch n, since := w.failuresSince(); {
		case !r.cfg.On():
			out = append(out, ends+"; renewal is off: issue the next one")
		case n > 0:
			out = append(out, fmt.Sprintf("%s; renewing it at step-ca has failed %d times since %s (see the logs)", ends, n, since.UTC().Format(time.RFC3339)))
		default:
			out = append(out, ends+"; not renewed yet")
		}
	}
	return out
}

func (w *watched) failed() (int, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failures == 0 {
		w.since = time.Now()
	}
	w.failures++
	return w.failures, w.since
}

func (w *watched) renewed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failures, w.since, w.last = 0, time.Time{}, time.Now()
}

func (w *watched) lastRenewal() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *watched) failuresInRow() int {
	n, _ := w.failuresSince()
	return n
}

func (w *watched) failuresSince() (int, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failures, w.since
}
