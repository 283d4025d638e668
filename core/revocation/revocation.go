// Package revocation keeps core's view of the CA's revocations: it polls
// step-ca's CRL, checks its signature with the intermediate, and refuses
// client certificates on it at the TLS handshake. Device revocation by an
// admin takes effect at core at once through the registry; the CRL covers
// what was revoked at the CA directly (prov-pki revoke of an admin or proxy
// certificate), within one poll interval (ca.crlInterval): at the next
// handshake and, for connections already open, at their next request or,
// at the broker, at once (OnNewRevocations).
package revocation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrRevoked is the error of a revoked certificate.
var ErrRevoked = errors.New("certificate revoked at the CA")

// CRLSource fetches the CA's CRL and checks its signature against issuer
// (stepca.Client).
type CRLSource interface {
	CRL(ctx context.Context, issuer *x509.Certificate) (*x509.RevocationList, error)
}

// fetchTimeout bounds one CRL fetch.
const fetchTimeout = 10 * time.Second

// Checker holds the revoked serial numbers of the last good CRL.
type Checker struct {
	src      CRLSource
	issuer   *x509.Certificate
	interval time.Duration
	log      *slog.Logger

	onNew func()

	mu      sync.RWMutex
	revoked map[string]bool
	fetched time.Time
}

// OnNewRevocations has f called after every refresh that brings serials
// the last list did not have (the broker closes their sessions). Call it
// before Run.
func (c *Checker) OnNewRevocations(f func()) { c.onNew = f }

// New makes a checker of the CRL from src, signed by issuer.
func New(src CRLSource, issuer *x509.Certificate, interval time.Duration, log *slog.Logger) *Checker {
	return &Checker{
		src: src, issuer: issuer, interval: interval, log: log.With("component", "crl"),
		revoked: map[string]bool{},
	}
}

// Check refuses a certificate on the CRL.
func (c *Checker) Check(cert *x509.Certificate) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.revoked[cert.SerialNumber.String()] {
		return fmt.Errorf("%w: serial %s", ErrRevoked, cert.SerialNumber)
	}
	return nil
}

// Run polls until ctx ends. A failed fetch keeps the last good list.
func (c *Checker) Run(ctx context.Context) error {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		if err := c.Refresh(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("CRL refresh failed; keeping the last good list", "err", err, "last", c.fetched)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Refresh fetches and installs the CRL once.
func (c *Checker) Refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	crl, err := c.src.CRL(ctx, c.issuer)
	if err != nil {
		return fmt.Errorf("fetch CRL: %w", err)
	}
	revoked := make(map[string]bool, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		revoked[e.SerialNumber.String()] = true
	}
	c.mu.Lock()
	news := false
	for s := range revoked {
		if !c.revoked[s] {
			news = true
			break
		}
	}
	c.revoked, c.fetched = revoked, time.Now()
	c.mu.Unlock()
	if news && c.onNew != nil {
		c.onNew()
	}
	return nil
}
