package ca

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/authority/provisioner"
	stepca "github.com/smallstep/certificates/ca"
)

// Client talks to a running CA (embedded or the real step-ca binary) over
// HTTPS, trusting only the deployment's root.
type Client struct {
	base string
	c    *stepca.Client
}

// NewClient connects to the CA at baseURL (https://host:port), pinning the
// root certificate in rootFile.
func NewClient(baseURL, rootFile string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("CA URL %q: want https://host:port", baseURL)
	}
	c, err := stepca.NewClient(baseURL, stepca.WithRootFile(rootFile))
	if err != nil {
		return nil, fmt.Errorf("CA client for %s: %w", baseURL, err)
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), c: c}, nil
}

// SignAudience is the audience of a sign token for this CA.
func (c *Client) SignAudience() string { return c.base + "/1.0/sign" }

// RevokeAudience is the audience of a revoke token for this CA.
func (c *Client) RevokeAudience() string { return c.base + "/1.0/revoke" }

// Health checks that the CA answers.
func (c *Client) Health(ctx context.Context) error {
	if _, err := c.c.HealthWithContext(ctx); err != nil {
		return fmt.Errorf("CA %s health: %w", c.base, err)
	}
	return nil
}

// Sign sends a CSR with its one-time token to /1.0/sign; the certificate
// gets the provisioner's default lifetime.
func (c *Client) Sign(ctx context.Context, csr *x509.CertificateRequest, ott string) ([]*x509.Certificate, error) {
	return c.SignFor(ctx, csr, ott, 0)
}

// SignFor is Sign with a lifetime (zero: the provisioner's default); the
// provisioner's minimum and maximum still apply.
func (c *Client) SignFor(ctx context.Context, csr *x509.CertificateRequest, ott string, lifetime time.Duration) ([]*x509.Certificate, error) {
	req := &api.SignRequest{CsrPEM: api.CertificateRequest{CertificateRequest: csr}, OTT: ott}
	if lifetime > 0 {
		req.NotAfter = provisioner.NewTimeDuration(time.Now().Add(lifetime))
	}
	resp, err := c.c.SignWithContext(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("CA %s sign: %w", c.base, err)
	}
	var chain []*x509.Certificate
	for _, cert := range resp.CertChainPEM {
		chain = append(chain, cert.Certificate)
	}
	if len(chain) == 0 {
		chain = []*x509.Certificate{resp.ServerPEM.Certificate, resp.CaPEM.Certificate}
	}
	return chain, nil
}

// Revoke revokes a certificate by serial number (decimal) with a revoke
// token. Revocation is passive: step-ca records it, refuses renewals and
// lists it in its CRL; relying parties (core) check it.
func (c *Client) Revoke(ctx context.Context, serial, ott, reason string) error {
	_, err := c.c.RevokeWithContext(ctx, &api.RevokeRequest{
		Serial:  serial,
		OTT:     ott,
		Reason:  reason,
		Passive: true,
	}, nil)
	if err != nil {
		return fmt.Errorf("CA %s revoke %s: %w", c.base, serial, err)
	}
	return nil
}
