// Package revocation keeps core's view of the CA's revocations: it polls
// step-ca's CRL, checks its signature with the intermediate, and refuses
// client certificates on it at the TLS handshake. Device revocation by an
// admin takes effect at core at once through the registry; the CRL covers
// what was revoked at the CA directly (prov-pki revoke of an admin or proxy
// certificate), within one poll interval.
package revocation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/fleetprov/prov/pki"
)

// ErrRevoked is the error of a revoked certificate.
var ErrRevoked = errors.New("certificate revoked at the CA")

// Checker holds the revoked serial numbers of the last good CRL.
type Checker struct {
	url      string
	issuer   *x509.Certificate
	client   *http.Client
	interval time.Duration
	log      *slog.Logger

	mu      sync.RWMutex
	revoked map[string]bool
	fetched time.Time
}

// New makes a checker of the CRL at caURL/1.0/crl, signed by issuer.
func New(caURL string, issuer *x509.Certificate, roots *pki.TrustBundle, interval time.Duration, log *slog.Logger) *Checker {
	return &Checker{
		url: caURL + "/1.0/crl", issuer: issuer, interval: interval, log: log.With("component", "crl"),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: pki.ClientTLSConfig(nil, roots, pki.ClientOptions{}),
		}},
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch CRL: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch CRL: HTTP %d", resp.StatusCode)
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("read CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("parse CRL: %w", err)
	}
	if err := crl.CheckSignatureFrom(c.issuer); err != nil {
		return fmt.Errorf("CRL signature: %w", err)
	}
	revoked := make(map[string]bool, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		revoked[e.SerialNumber.String()] = true
	}
	c.mu.Lock()
	c.revoked, c.fetched = revoked, time.Now()
	c.mu.Unlock()
	return nil
}
