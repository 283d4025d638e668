package deployment

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/token"
)

// ConsoleDir is the hand-off directory of a proxy's console certificate:
// console/<proxy>/ (cert.pem, key.pem, root_ca.crt).
func (l Layout) ConsoleDir(proxy string) string { return filepath.Join(l.Dir, "console", proxy) }

// ConsoleCert is a proxy's console certificate chain.
func (l Layout) ConsoleCert(proxy string) string {
	return filepath.Join(l.ConsoleDir(proxy), "cert.pem")
}

// ConsoleKey is its private key.
func (l Layout) ConsoleKey(proxy string) string { return filepath.Join(l.ConsoleDir(proxy), "key.pem") }

// ConsoleRequest asks for a proxy's console certificate.
type ConsoleRequest struct {
	// Proxy names the proxy; Hosts are its factory-side host names, as
	// in its identity.
	Proxy string
	Hosts []string
	// Replace moves an existing console directory aside instead of
	// refusing.
	Replace bool
}

// consoleRole is the service template's role of a console certificate:
// the token names spiffe://<trust-domain>/console/<proxy> for the
// template's checks, and the certificate names no identity.
const consoleRole = "console"

// IssueConsole issues a proxy's console certificate: the proxy's host
// names and no identity URI, so that browsers accept it under the
// intermediate's URI name constraint (see pki.VerifyWebServer), and no
// relying party of the deployment takes it for a principal. It is written
// to console/<proxy>/ like an identity's hand-off directory.
func (d *Deployment) IssueConsole(ctx context.Context, s Signer, admin *token.Provisioner, req ConsoleRequest, now time.Time) (*Issued, error) {
	if !d.HasProxy(req.Proxy) {
		return nil, fmt.Errorf("%w %q: this PKI has provisioners for %v", ErrUnknownProxy, req.Proxy, d.Proxies)
	}
	if err := pki.ValidateName(req.Proxy); err != nil {
		return nil, err
	}
	if len(req.Hosts) == 0 {
		return nil, fmt.Errorf("console certificate of %s: name the proxy's hosts", req.Proxy)
	}
	for _, h := range req.Hosts {
		if err := validateHost(h); err != nil {
			return nil, err
		}
	}
	what := "console certificate of proxy " + req.Proxy
	dir := d.ConsoleDir(req.Proxy)
	stamp := now.UTC().Format("20060102T150405Z")
	replaced, err := replacing(what, dir, req.Replace, stamp)
	if err != nil {
		return nil, err
	}
	key, err := newKey(pki.RoleProxy)
	if err != nil {
		return nil, err
	}
	uri := fmt.Sprintf("spiffe://%s/%s/%s", d.TrustDomain, consoleRole, req.Proxy)
	chain, err := signService(ctx, s, admin, what, consoleRole+"/"+req.Proxy, append([]string{uri}, req.Hosts...), key, now)
	if err != nil {
		return nil, err
	}
	if err := d.verifyConsole(chain, req.Hosts, now); err != nil {
		return nil, fmt.Errorf("issue %s: %w", what, err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
	}
	if err := d.installIdentity(what, dir, replaced, stamp, key, chain); err != nil {
		return nil, err
	}
	return &Issued{Dir: dir, Leaf: chain[0], Replaced: replaced, CertFile: d.ConsoleCert(req.Proxy), KeyFile: d.ConsoleKey(req.Proxy)}, nil
}

// verifyConsole checks what the CA returned as the proxy will at start.
func (d *Deployment) verifyConsole(chain []*x509.Certificate, hosts []string, now time.Time) error {
	bundle, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		return err
	}
	return bundle.VerifyWebServer(chain, hosts, now)
}
