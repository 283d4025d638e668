package deployment

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetprov/prov/internal/atomicfile"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/token"
)

// Signer sends a CSR and its token to the CA: the in-process authority
// during init, the HTTP client of a running CA afterwards.
type Signer interface {
	Sign(ctx context.Context, csr *x509.CertificateRequest, ott string) ([]*x509.Certificate, error)
	SignAudience() string
}

// IdentityRequest asks for a service identity's certificate.
type IdentityRequest struct {
	Role pki.Role
	Name string
	// Hosts are the DNS names and IP addresses of a core or proxy server.
	Hosts []string
	// Replace moves an existing identity directory aside instead of
	// refusing.
	Replace bool
}

// Issued is what IssueIdentity wrote.
type Issued struct {
	Identity pki.Identity
	Dir      string
	CertFile string
	KeyFile  string
	Leaf     *x509.Certificate
	// Replaced is where a previous identity directory was moved, if any.
	Replaced string
}

// IssueIdentity makes a key for a service identity, has the CA sign it with
// a token of the admin provisioner, and writes the hand-off directory
// <role>/<name>/ (cert.pem, key.pem, root_ca.crt). The key never leaves
// this process except into key.pem.
func (d *Deployment) IssueIdentity(ctx context.Context, s Signer, admin *token.Provisioner, req IdentityRequest, now time.Time) (*Issued, error) {
	id, err := d.checkIdentityRequest(req)
	if err != nil {
		return nil, err
	}
	dir := d.IdentityDir(req.Role, req.Name)
	stamp := now.UTC().Format("20060102T150405Z")
	replaced, err := replacing("identity "+id.String(), dir, req.Replace, stamp)
	if err != nil {
		return nil, err
	}

	key, err := newKey(req.Role)
	if err != nil {
		return nil, err
	}
	chain, err := signService(ctx, s, admin, id.String(), id.CommonName(), append([]string{id.String()}, req.Hosts...), key, now)
	if err != nil {
		return nil, err
	}
	if err := d.verifyIssued(chain, id, req.Role, now); err != nil {
		return nil, err
	}
	if err := d.installIdentity(id.String(), dir, replaced, stamp, key, chain); err != nil {
		return nil, err
	}
	out := &Issued{
		Identity: id, Dir: dir, Leaf: chain[0], Replaced: replaced,
		CertFile: d.IdentityCert(req.Role, req.Name),
		KeyFile:  d.IdentityKey(req.Role, req.Name),
	}
	return out, nil
}

// checkIdentityRequest is the identity a request asks for, if this PKI
// issues it: prov-pki issues no device certificates, a proxy's name must
// be one with a provisioner, and only servers carry host names.
func (d *Deployment) checkIdentityRequest(req IdentityRequest) (pki.Identity, error) {
	id, err := pki.NewIdentity(d.TrustDomain, req.Role, req.Name)
	if err != nil {
		return pki.Identity{}, err
	}
	switch req.Role {
	case pki.RoleDevice:
		return pki.Identity{}, errors.New("device certificates are issued through a proxy, not by prov-pki")
	case pki.RoleProxy:
		if !d.HasProxy(req.Name) {
			return pki.Identity{}, fmt.Errorf("%w %q: this PKI has provisioners for %v", ErrUnknownProxy, req.Name, d.Proxies)
		}
	case pki.RoleAdmin, pki.RoleSigner:
		if len(req.Hosts) > 0 {
			return pki.Identity{}, fmt.Errorf("a %s certificate carries no host names (got %v)", req.Role, req.Hosts)
		}
	}
	for _, h := range req.Hosts {
		if err := validateHost(h); err != nil {
			return pki.Identity{}, err
		}
	}
	return id, nil
}

// signService has the CA sign key for what (an identity URI): a CSR that
// names nothing, and a token of the admin provisioner that names the
// subject CN and SANs (the service template decides what is written).
func signService(ctx context.Context, s Signer, admin *token.Provisioner, what, cn string, sans []string, key crypto.Signer, now time.Time) ([]*x509.Certificate, error) {
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("CSR for %s: %w", what, err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("CSR for %s: %w", what, err)
	}
	ott, err := admin.SignToken(token.SignRequest{
		Audience: s.SignAudience(),
		Subject:  cn,
		SANs:     sans,
		CSR:      csr,
	}, now)
	if err != nil {
		return nil, err
	}
	chain, err := s.Sign(ctx, csr, ott)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", what, err)
	}
	return chain, nil
}

// verifyIssued checks what came back as a relying party will: it chains
// to our root now, has exactly the identity asked for and the role's key
// usage.
func (d *Deployment) verifyIssued(chain []*x509.Certificate, id pki.Identity, role pki.Role, now time.Time) error {
	bundle, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		return err
	}
	got, err := bundle.Verify(chain, pki.VerifyOptions{Time: now, KeyUsage: role.ExtKeyUsage(), Roles: []pki.Role{role}})
	if err != nil {
		return fmt.Errorf("issue %s: the CA's certificate does not verify: %w", id, err)
	}
	if got != id {
		return fmt.Errorf("issue %s: the CA returned a certificate for %s", id, got)
	}
	return nil
}

// installIdentity writes the directory dir of what (key, chain, root). It
// writes the new directory beside the old one, then swaps, so a failure
// leaves the old one in place; an old one is moved to replaced, if given.
func (d *Deployment) installIdentity(what string, dir, replaced, stamp string, key crypto.Signer, chain []*x509.Certificate) error {
	root, err := os.ReadFile(d.RootCert())
	if err != nil {
		return fmt.Errorf("read root: %w", err)
	}
	staging := dir + ".new-" + stamp
	defer func() { _ = os.RemoveAll(staging) }()
	if err := writeKey(filepath.Join(staging, "key.pem"), key, nil); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(staging, "cert.pem"), certsPEM(chain...), publicMode); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(staging, "root_ca.crt"), root, publicMode); err != nil {
		return err
	}
	if _, err := os.Stat(dir); err == nil {
		// A proxy's directory also holds its provisioner key: keep it.
		if err := copyOtherFiles(dir, staging); err != nil {
			return err
		}
		old := replaced
		if old == "" { // only the provisioner key was there; it is copied
			old = dir + ".old-" + stamp
			defer func() { _ = os.RemoveAll(old) }()
		}
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("move old identity aside: %w", err)
		}
	}
	if err := os.Rename(staging, dir); err != nil {
		return fmt.Errorf("install %s: %w", what, err)
	}
	return atomicfile.SyncDir(filepath.Dir(dir))
}

// replacing is where the hand-off directory dir of what goes when it is
// issued again ("" if there is none yet), or ErrExists unless replace.
func replacing(what, dir string, replace bool, stamp string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "cert.pem")); err != nil {
		return "", nil //nolint:nilerr // nothing there to replace
	}
	if !replace {
		return "", fmt.Errorf("%s %w in %s (use --force to replace it; the old one is kept)", what, ErrExists, dir)
	}
	return dir + ".replaced-" + stamp, nil
}

// newKey makes the key of a role: Ed25519 for the image signer (small,
// deterministic signatures), ECDSA P-256 for TLS identities (every TLS
// stack, Mosquitto's OpenSSL included, has it).
func newKey(role pki.Role) (crypto.Signer, error) {
	if role == pki.RoleSigner {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate Ed25519 key: %w", err)
		}
		return k, nil
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate P-256 key: %w", err)
	}
	return k, nil
}

// validateHost accepts an IP address or a lower-case DNS name.
func validateHost(h string) error {
	if net.ParseIP(h) != nil {
		return nil
	}
	if err := pki.ValidateTrustDomain(h); err != nil { // the same rule: a lower-case DNS name
		return fmt.Errorf("host %q is neither an IP address nor a lower-case DNS name", h)
	}
	return nil
}

// copyOtherFiles copies the regular files of an old identity directory that
// are not the certificate, key or root (a proxy's provisioner key) to dst.
func copyOtherFiles(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	for _, e := range entries {
		switch e.Name() {
		case "cert.pem", "key.pem", "root_ca.crt":
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name())) //nolint:gosec // our own directory
		if err != nil {
			return fmt.Errorf("keep %s: %w", e.Name(), err)
		}
		if err := writeFile(filepath.Join(dst, e.Name()), data, secretMode); err != nil {
			return err
		}
	}
	return nil
}
