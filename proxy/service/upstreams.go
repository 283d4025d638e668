package service

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/pki/stepca"
)

// probeTimeout bounds one health call to core or step-ca, at start and
// for /readyz: a TLS handshake and a small answer on the deployment's own
// network take milliseconds.
const probeTimeout = 5 * time.Second

// Back-off between start probes of an upstream that does not answer yet.
const (
	firstRetry = 100 * time.Millisecond
	maxRetry   = 5 * time.Second
)

// upstream is core or step-ca as the proxy checks it: health answers only
// over a connection whose server certificate was checked as that
// upstream's.
type upstream struct {
	name, url string
	health    func(context.Context) error
}

// coreHealth asks core's /healthz over the pinned connection: an answer
// means this deployment's core (its certificate was checked at the
// handshake) serves its API there.
func coreHealth(ctx context.Context, hc *http.Client, base string) error {
	_, err := coreClock(ctx, hc, base)
	return err
}

// coreClock is coreHealth that also returns the offset of core's clock
// from this one: core's Date header (whole seconds) against the middle of
// the call, so within about a second.
func coreClock(ctx context.Context, hc *http.Client, base string) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, coreapi.RouteHealthz.Method, strings.TrimSuffix(base, "/")+coreapi.RouteHealthz.Path, http.NoBody)
	if err != nil {
		return 0, err
	}
	sent := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	got := time.Now()
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("core /healthz answered HTTP %d", resp.StatusCode)
	}
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return 0, fmt.Errorf("core /healthz: no Date header: %w", err)
	}
	// Date is truncated to the second: core's clock was in [date, date+1s).
	mid := sent.Add(got.Sub(sent) / 2)
	return date.Add(500 * time.Millisecond).Sub(mid), nil
}

// wrongIdentity says whether a failed call met a server that is not the
// upstream: its chain does not verify under the root or for the host
// (crypto/tls), or it holds a certificate of the deployment that is not
// the upstream's (the checks of newUpstreams and stepca).
func wrongIdentity(err error) bool {
	var cv *tls.CertificateVerificationError
	return errors.As(err, &cv) || errors.Is(err, ErrWrongIdentity) || errors.Is(err, stepca.ErrNotTheCA)
}

// awaitUpstreams waits, at most startupTimeout, until core and step-ca
// both answer as themselves, so a proxy started a little before them
// still comes up. A server answering with the wrong certificate ends the
// wait at once; the error names each upstream that failed and why. A stop
// (ctx ending) while waiting is not an error.
func (p *proxy) awaitUpstreams(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, p.cfg.StartupTimeout)
	defer cancel()
	errs := make([]error, len(p.upstreams))
	var wg sync.WaitGroup
	for i, u := range p.upstreams {
		wg.Go(func() {
			errs[i] = p.await(wctx, u)
			if errors.Is(errs[i], ErrWrongIdentity) {
				cancel() // no use waiting for the other
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	var failed []error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			failed = append(failed, err)
		}
	}
	return errors.Join(failed...)
}

// await probes one upstream until it answers as itself, it answers as
// something else, or ctx ends.
func (p *proxy) await(ctx context.Context, u upstream) error {
	wait := firstRetry
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := u.health(actx)
		cancel()
		switch {
		case err == nil:
			p.log.Info("upstream answers as itself", "upstream", u.name, "url", u.url, "attempts", attempt)
			return nil
		case wrongIdentity(err):
			return &UpstreamError{Upstream: u.name, URL: u.url, Err: fmt.Errorf("%w: %w", ErrWrongIdentity, err)}
		}
		p.log.Warn("waiting for upstream", "upstream", u.name, "url", u.url, "attempt", attempt, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return &UpstreamError{Upstream: u.name, URL: u.url,
					Err: fmt.Errorf("%w within startupTimeout %s: %w", ErrNoAnswer, p.cfg.StartupTimeout, err)}
			}
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, maxRetry)
	}
}

// ready says whether core and step-ca both answer as themselves now; the
// message (public, on /readyz) names which does not, the log says why.
func (p *proxy) ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	why := make([]error, len(p.upstreams))
	var wg sync.WaitGroup
	for i, u := range p.upstreams {
		wg.Go(func() {
			err := u.health(ctx)
			if err == nil {
				return
			}
			p.log.Warn("not ready", "upstream", u.name, "url", u.url, "err", err)
			why[i] = ErrNoAnswer
			if wrongIdentity(err) {
				why[i] = ErrWrongIdentity
			}
		})
	}
	wg.Wait()
	var not notReady
	for i, err := range why {
		if err != nil {
			not = append(not, fmt.Errorf("%s %w", p.upstreams[i].name, err))
		}
	}
	if len(not) == 0 {
		return nil
	}
	return not
}

// notReady is each upstream that is not ready, on one line (the /readyz
// message).
type notReady []error

func (n notReady) Error() string {
	msgs := make([]string, len(n))
	for i, err := range n {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (n notReady) Unwrap() []error { return n }
