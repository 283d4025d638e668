// Package stepca is the one client of step-ca that prov's binaries use: the
// proxy signs and revokes, core revokes and reads the CRL, prov-pki issues
// and revokes, the device renews. It speaks step-ca's HTTP API with the
// standard library and pins the deployment's root (pki) and, with
// WithCAIdentityCheck, step-ca's own certificate, so linking it costs
// a binary nothing of step-ca itself: no authority, no database drivers, no
// cloud KMS code. The embedded server and the in-process authority are in
// pki/ca, which only prov-pki and tests link.
//
// Every answer is read with a size limit; a refusal is a *Error with
// step-ca's status and message; a revocation of a certificate step-ca
// already holds as revoked is ErrAlreadyRevoked.
package stepca

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fleetprov/prov/pki"
)

// Size limits of what is read from step-ca. A JSON answer holds at most a
// few certificates (a sign answer is about 2 KiB); a CRL grows with the
// revocations still unexpired, about 40 bytes each.
const (
	maxJSONAnswer = 64 << 10
	maxCRL        = 32 << 20
	// maxMessage is how much of a refusal's message is kept.
	maxMessage = 512
)

// Client talks to one step-ca (the embedded one of prov-pki ca, or the
// step-ca binary on the same configuration) over HTTPS, trusting only the
// deployment's roots. Every call is bounded by its context only; give it a
// deadline.
type Client struct {
	base    string
	hc      *http.Client
	hasCert bool
}

type options struct {
	kp      *pki.KeyPair
	now     func() time.Time
	floor   *pki.Floor
	checkCA bool
}

// Option adjusts a Client.
type Option func(*options)

// WithClientCertificate presents kp at every TLS handshake: Renew needs it
// (step-ca renews the certificate the client authenticates with).
func WithClientCertificate(kp *pki.KeyPair) Option {
	return func(o *options) { o.kp = kp }
}

// WithClock sets the time step-ca's certificate is checked at: now (nil:
// time.Now), never before floor (nil: no floor), which step-ca's chain may
// raise. A device without a real-time clock boots in 1970 and needs the
// floor (pki.Floor).
func WithClock(now func() time.Time, floor *pki.Floor) Option {
	return func(o *options) { o.now, o.floor = now, floor }
}

// WithCAIdentityCheck accepts as step-ca only a server whose certificate
// is step-ca's own, not merely one of the deployment's that names the
// URL's host: it must also name no identity (no URI SAN). Every certificate
// the deployment's provisioners issue names exactly one (the device and
// service templates write it; prov-pki init adds no other provisioner),
// while step-ca makes its own TLS certificate from ca.json's dnsNames only,
// with a fresh key at every start (authority.GetTLSCertificate in
// smallstep/certificates v0.30.2), so neither a key nor a fingerprint could
// be pinned across restarts. A server holding core's or a proxy's
// certificate for the same host, which would otherwise be taken for the
// CA and handed tokens, fails the handshake with ErrNotTheCA before a
// request is sent.
func WithCAIdentityCheck() Option {
	return func(o *options) { o.checkCA = true }
}

// New makes a client of the step-ca at baseURL (https://host:port). Its
// server certificate must chain to roots and name the URL's host; step-ca's
// certificate carries no role, so the host name is what identifies it,
// unless WithCAIdentityCheck asks for more.
func New(baseURL string, roots *pki.TrustBundle, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("step-ca URL %q: want https://host:port", baseURL)
	}
	if roots == nil {
		return nil, errors.New("step-ca client: no trust bundle")
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	// The host name is set here rather than left to the transport: a
	// check at a floor verifies the chain itself and needs it, also for an
	// IP address, which TLS does not send.
	tlsCfg := pki.ClientTLSConfig(o.kp, roots, pki.ClientOptions{ServerName: u.Hostname(), Now: o.now, Floor: o.floor})
	if o.checkCA {
		verify := tlsCfg.VerifyConnection
		tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if err := verify(cs); err != nil {
				return err
			}
			return checkCAIdentity(cs)
		}
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	// The transport is the one step-ca's own Go client used (HTTP/2, so
	// concurrent enrollments share a connection), without an environment
	// proxy: step-ca is the deployment's own service, reached directly, as
	// every other connection of prov is.
	tr := &http.Transport{
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsCfg,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &Client{
		base:    strings.TrimSuffix(baseURL, "/"),
		hc:      &http.Client{Transport: tr},
		hasCert: o.kp != nil,
	}, nil
}

// checkCAIdentity runs after the chain was verified (by crypto/tls, or at
// the floor by pki), so the first peer certificate is the verified leaf.
func checkCAIdentity(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: it sent no certificate", ErrNotTheCA)
	}
	leaf := cs.PeerCertificates[0]
	if len(leaf.URIs) > 0 {
		return fmt.Errorf("%w: its certificate names %s (a service of the deployment); step-ca's own names hosts only",
			ErrNotTheCA, truncate(leaf.URIs[0].String()))
	}
	return nil
}

// SignAudience is the audience of a sign token for this CA.
func (c *Client) SignAudience() string { return c.base + "/1.0/sign" }

// RevokeAudience is the audience of a revoke token for this CA.
func (c *Client) RevokeAudience() string { return c.base + "/1.0/revoke" }

// Health checks that the CA answers GET /health with {"status":"ok"}.
func (c *Client) Health(ctx context.Context) error {
	var ans statusResponse
	if err := c.call(ctx, http.MethodGet, "/health", nil, &ans); err != nil {
		return fmt.Errorf("step-ca %s health: %w", c.base, err)
	}
	if ans.Status != "ok" {
		return fmt.Errorf("step-ca %s health: %w: status %q", c.base, ErrBadAnswer, truncate(ans.Status))
	}
	return nil
}

// Sign sends a CSR with its one-time token to /1.0/sign; the certificate
// gets the provisioner's default lifetime. It returns the chain, leaf first.
func (c *Client) Sign(ctx context.Context, csr *x509.CertificateRequest, ott string) ([]*x509.Certificate, error) {
	return c.SignFor(ctx, csr, ott, 0)
}

// SignFor is Sign with a lifetime (zero: the provisioner's default), sent as
// notAfter; the provisioner's minimum and maximum still apply.
func (c *Client) SignFor(ctx context.Context, csr *x509.CertificateRequest, ott string, lifetime time.Duration) ([]*x509.Certificate, error) {
	req := signRequest{
		CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})),
		OTT: ott,
	}
	if lifetime > 0 {
		req.NotAfter = time.Now().Add(lifetime).Format(time.RFC3339Nano)
	}
	chain, err := c.issue(ctx, "/1.0/sign", req)
	if err != nil {
		return nil, fmt.Errorf("step-ca %s sign: %w", c.base, err)
	}
	return chain, nil
}

// Revoke revokes a certificate by serial number (decimal) with a revoke
// token. Revocation is passive, the only kind step-ca has: it records it,
// refuses renewals and lists it in its CRL; relying parties (core) check
// it. A certificate already revoked gives an error that is
// ErrAlreadyRevoked.
func (c *Client) Revoke(ctx context.Context, serial, ott, reason string) error {
	req := revokeRequest{Serial: serial, OTT: ott, Reason: reason, Passive: true}
	var ans statusResponse
	if err := c.call(ctx, http.MethodPost, "/1.0/revoke", req, &ans); err != nil {
		if alreadyRevoked(err) {
			err = fmt.Errorf("%w: %w", ErrAlreadyRevoked, err)
		}
		return fmt.Errorf("step-ca %s revoke %s: %w", c.base, serial, err)
	}
	return nil
}

// Renew asks step-ca for a new certificate for the one this client presents
// (POST /1.0/renew over mTLS; same key, same names, a new serial). It
// returns the chain, leaf first, unchecked beyond parsing: the caller knows
// whose identity and key it must be.
func (c *Client) Renew(ctx context.Context) ([]*x509.Certificate, error) {
	if !c.hasCert {
		return nil, fmt.Errorf("step-ca %s renew: %w", c.base, ErrNoClientCertificate)
	}
	chain, err := c.issue(ctx, "/1.0/renew", nil)
	if err != nil {
		return nil, fmt.Errorf("step-ca %s renew: %w", c.base, err)
	}
	return chain, nil
}

// CRL fetches step-ca's certificate revocation list (GET /1.0/crl, DER)
// and returns it once its signature checks against issuer, the CA
// certificate the caller trusts to sign it (the intermediate).
func (c *Client) CRL(ctx context.Context, issuer *x509.Certificate) (*x509.RevocationList, error) {
	if issuer == nil {
		return nil, fmt.Errorf("step-ca %s CRL: %w: no issuer to check it with", c.base, ErrCRLSignature)
	}
	der, err := c.do(ctx, http.MethodGet, "/1.0/crl", http.NoBody, maxCRL)
	if err != nil {
		return nil, fmt.Errorf("step-ca %s CRL: %w", c.base, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("step-ca %s CRL: %w: %w", c.base, ErrBadAnswer, err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("step-ca %s CRL: %w (%q): %w", c.base, ErrCRLSignature, issuer.Subject.CommonName, err)
	}
	return crl, nil
}

// Roots fetches the root certificates step-ca serves (GET /roots). They
// arrive over a connection already checked against the pinned roots; a
// caller compares them with what it holds.
func (c *Client) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	var ans rootsResponse
	if err := c.call(ctx, http.MethodGet, "/roots", nil, &ans); err != nil {
		return nil, fmt.Errorf("step-ca %s roots: %w", c.base, err)
	}
	roots, err := parsePEMs(ans.Certificates)
	if err != nil {
		return nil, fmt.Errorf("step-ca %s roots: %w", c.base, err)
	}
	return roots, nil
}

// issue posts to an endpoint that answers with a new certificate (sign,
// renew) and returns its chain.
func (c *Client) issue(ctx context.Context, path string, body any) ([]*x509.Certificate, error) {
	var ans signResponse
	if err := c.call(ctx, http.MethodPost, path, body, &ans); err != nil {
		return nil, err
	}
	return ans.chain()
}

// chain is the answer's chain: certChain, or crt and ca from a server that
// sends no certChain.
func (a *signResponse) chain() ([]*x509.Certificate, error) {
	pems := a.CertChain
	if len(pems) == 0 {
		for _, p := range []string{a.Crt, a.CA} {
			if p != "" {
				pems = append(pems, p)
			}
		}
	}
	return parsePEMs(pems)
}

// parsePEMs parses PEM certificates; none at all is a malformed answer.
func parsePEMs(pems []string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for i, p := range pems {
		cs, err := pki.ParseCertificates([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %w", ErrBadAnswer, i+1, err)
		}
		certs = append(certs, cs...)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificates", ErrBadAnswer)
	}
	return certs, nil
}

// call sends body (if not nil) as JSON and decodes the JSON answer into ans.
func (c *Client) call(ctx context.Context, method, path string, body, ans any) error {
	var rd io.Reader = http.NoBody
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	data, err := c.do(ctx, method, path, rd, maxJSONAnswer)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, ans); err != nil {
		return fmt.Errorf("%w: not the JSON expected: %w", ErrBadAnswer, err)
	}
	return nil
}

// do sends one request and returns the body of a 2xx answer, at most limit
// bytes; any other status is a *Error.
func (c *Client) do(ctx context.Context, method, path string, body io.Reader, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != http.NoBody {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, refusal(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: the answer is larger than %d bytes", ErrBadAnswer, limit)
	}
	return data, nil
}

// refusal reads a non-2xx answer into a *Error.
func refusal(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxJSONAnswer))
	e := &Error{Status: resp.StatusCode}
	var er errorResponse
	if json.Unmarshal(data, &er) == nil && er.Message != "" {
		e.Message = truncate(er.Message)
	} else {
		e.Message = truncate(string(bytes.TrimSpace(data)))
	}
	return e
}

// truncate keeps a message from step-ca (or whatever answered in its place)
// short and valid UTF-8 before it goes into an error or a log.
func truncate(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= maxMessage {
		return s
	}
	cut := maxMessage
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
