package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// maxPEMFile bounds what is read from a root, certificate or key file; real
// ones are a few KiB.
const maxPEMFile = 1 << 20

// TrustBundle is the pinned root (or roots, during a root rotation) of one
// deployment. The roots name their trust domain in a URI SAN spiffe://<td>,
// so a device needs nothing but this one public file to know whom to trust.
type TrustBundle struct {
	trustDomain string
	roots       []*x509.Certificate
	pool        *x509.CertPool
	verified    *verifiedChains
	// issuers remembers which root ends a chain IssuingOrder accepted.
	issuers *issuerMemo
}

// LoadTrustBundle reads a PEM file of root CA certificates.
func LoadTrustBundle(path string) (*TrustBundle, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadTrustBundle, err)
	}
	b, err := ParseTrustBundle(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// ParseTrustBundle parses PEM root CA certificates. Anything that is not a
// self-signed CA certificate naming one common trust domain is refused.
func ParseTrustBundle(data []byte) (*TrustBundle, error) {
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadTrustBundle, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificates", ErrBadTrustBundle)
	}
	b := &TrustBundle{pool: x509.NewCertPool(), verified: newVerifiedChains(), issuers: &issuerMemo{m: map[[32]byte]*x509.Certificate{}}}
	for i, c := range certs {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("%w: certificate %d (%q) is not a CA", ErrBadTrustBundle, i+1, c.Subject.CommonName)
		}
		if err := c.CheckSignatureFrom(c); err != nil {
			return nil, fmt.Errorf("%w: certificate %d (%q) is not a self-signed root: %w", ErrBadTrustBundle, i+1, c.Subject.CommonName, err)
		}
		td, err := rootTrustDomain(c)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d (%q): %w", ErrBadTrustBundle, i+1, c.Subject.CommonName, err)
		}
		if b.trustDomain != "" && td != b.trustDomain {
			return nil, fmt.Errorf("%w: roots name two trust domains, %q and %q", ErrBadTrustBundle, b.trustDomain, td)
		}
		b.trustDomain = td
		b.roots = append(b.roots, c)
		b.pool.AddCert(c)
	}
	return b, nil
}

// rootTrustDomain reads spiffe://<td> from a CA certificate.
func rootTrustDomain(c *x509.Certificate) (string, error) {
	if len(c.URIs) != 1 {
		return "", errors.New("a root must name its trust domain in exactly one URI SAN spiffe://<trust-domain>")
	}
	u := c.URIs[0]
	s := u.String()
	td, ok := strings.CutPrefix(s, "spiffe://")
	if !ok || strings.ContainsAny(td, "/?#@:") {
		return "", fmt.Errorf("root URI SAN %q is not spiffe://<trust-domain>", s)
	}
	if err := ValidateTrustDomain(td); err != nil {
		return "", err
	}
	return td, nil
}

// TrustDomain is the deployment's trust domain.
func (b *TrustBundle) TrustDomain() string { return b.trustDomain }

// Pool returns the roots as a pool for tls.Config and x509.VerifyOptions.
func (b *TrustBundle) Pool() *x509.CertPool { return b.pool }

// Roots returns the root certificates.
func (b *TrustBundle) Roots() []*x509.Certificate { return slices.Clone(b.roots) }

// VerifyOptions says what a chain must satisfy beyond leading to the root.
type VerifyOptions struct {
	// Time is the clock to verify at; zero means time.Now().
	Time time.Time
	// Floor, if set, is the earliest time the verifier believes it is; the
	// chain may raise it (see Floor).
	Floor *Floor
	// KeyUsage is the extended key usage the leaf must allow.
	KeyUsage x509.ExtKeyUsage
	// Roles, if set, are the roles accepted; any other is ErrRoleNotAllowed.
	Roles []Role
}

// Verify checks a certificate chain (leaf first, then intermediates) against
// the pinned roots at the effective time, checks the leaf's key usage, and
// returns the leaf's identity, which must be in this bundle's trust domain.
// With a Floor, the effective time is the later of the clock and the floor,
// or the chain's own issue time (see Floor); a chain that passes every
// check raises the floor to its issue time.
func (b *TrustBundle) Verify(chain []*x509.Certificate, opts VerifyOptions) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, fmt.Errorf("%w: empty chain", ErrUntrusted)
	}
	leaf := chain[0]
	now := opts.Time
	if now.IsZero() {
		now = time.Now()
	}
	key := chainKey(chain, opts.KeyUsage)
	w, err := verifyAt(chain, now, opts.Floor, func(at time.Time) (window, error) {
		if w, ok := b.verified.lookup(key, at); ok {
			return w, nil
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		chains, err := leaf.Verify(x509.VerifyOptions{
			Roots:         b.pool,
			Intermediates: inter,
			CurrentTime:   at,
			KeyUsages:     []x509.ExtKeyUsage{opts.KeyUsage},
		})
		if err != nil {
			return window{}, classifyVerifyError(leaf, at, err)
		}
		return b.verified.add(key, chains[0]), nil
	})
	if err != nil {
		return Identity{}, err
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return Identity{}, fmt.Errorf("%w: %q lacks digitalSignature", ErrKeyUsage, leaf.Subject.CommonName)
	}
	id, err := b.identify(leaf, opts.Roles)
	if err != nil {
		return Identity{}, err
	}
	// Every check passed: the chain proves the time. A floor that could not
	// be written stays raised in memory; persisting is the owner's concern.
	_ = opts.Floor.Raise(w.notBefore)
	return id, nil
}

func classifyVerifyError(leaf *x509.Certificate, at time.Time, err error) error {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		switch inv.Reason {
		case x509.Expired:
			return fmt.Errorf("%w: %q valid %s to %s, checked at %s", ErrExpired, leaf.Subject.CommonName,
				leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
		case x509.IncompatibleUsage:
			return fmt.Errorf("%w: %q: %w", ErrKeyUsage, leaf.Subject.CommonName, err)
		}
	}
	return fmt.Errorf("%w: %q: %w", ErrUntrusted, leaf.Subject.CommonName, err)
}

// parseCertificates parses a PEM bundle of certificates. Any other block, or
// text that is not PEM, is an error rather than silently skipped.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, not CERTIFICATE", len(certs)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("data after certificate %d is not PEM", len(certs))
	}
	return certs, nil
}

// ParseCertificates parses a PEM chain (leaf first). It refuses empty input,
// non-certificate blocks and trailing garbage.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return certs, nil
}

// readLimited reads a small file, refusing anything larger than maxPEMFile.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // paths come from the operator's configuration
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxPEMFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxPEMFile)
	}
	return data, nil
}
