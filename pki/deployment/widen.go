package deployment

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/fleetprov/prov/pki"
)

// WidenOptions ask Widen to permit more server hosts.
type WidenOptions struct {
	// Password is the deployment password, which decrypts the root key.
	Password []byte
	// RootKey is the encrypted root key file; empty means where init wrote
	// it (offline/root_ca.key), where it must be brought back for this.
	RootKey string
	// Hosts are DNS names and IP addresses to permit besides those the
	// intermediate already permits.
	Hosts []string
	Now   time.Time
}

// WidenResult says what Widen did.
type WidenResult struct {
	// Added are the hosts newly permitted; none means nothing changed.
	Added []string
	// Permitted are all the hosts the intermediate permits now (IP
	// addresses as single-address ranges).
	Permitted []string
	// Replaced is where the previous intermediate certificate was kept.
	Replaced string
}

// Widen re-issues the intermediate certificate so that its name
// constraints also permit opts.Hosts: signed by the root, with the same
// key, subject, key identifier and end of validity, so everything the old
// one signed (service and device certificates, CRLs) verifies under the new
// one too, and relying parties, which pin the root, accept it at once. The
// old certificate stays valid until it expires (it is not revoked: there is
// no CRL of the root), so it still vouches for what it signed, and only for
// its own, narrower names. step-ca reads the intermediate at start: it
// signs for the new hosts once restarted. Widening never narrows: an
// intermediate that constrains no DNS name (or no IP address) at all, as
// init made them before it constrained hosts, already permits every one,
// and Widen leaves it as it is.
func (d *Deployment) Widen(opts WidenOptions) (*WidenResult, error) {
	if len(opts.Hosts) == 0 {
		return nil, errors.New("--host: name at least one host to permit")
	}
	for _, h := range opts.Hosts {
		if err := validateHost(h); err != nil {
			return nil, fmt.Errorf("--host: %w", err)
		}
	}
	if opts.RootKey == "" {
		opts.RootKey = d.RootKey()
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	root, err := readCert(d.RootCert())
	if err != nil {
		return nil, err
	}
	inter, err := readCert(d.IntermediateCert())
	if err != nil {
		return nil, err
	}
	c := constraintsOf(inter)
	added := c.add(opts.Hosts...)
	res := &WidenResult{Added: added, Permitted: c.hosts()}
	if len(added) == 0 {
		return res, nil
	}
	rootKey, err := readRootKey(opts.RootKey, opts.Password, root)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		RawSubject:            inter.RawSubject, // byte for byte: the issuer of what it signed
		SubjectKeyId:          inter.SubjectKeyId,
		NotBefore:             opts.Now.Add(-time.Minute),
		NotAfter:              inter.NotAfter,
		KeyUsage:              inter.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	c.apply(tmpl, d.TrustDomain)
	widened, err := createCert(tmpl, root, inter.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("re-issue the intermediate: %w", err)
	}
	if err := widened.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("re-issued intermediate does not verify against the root: %w", err)
	}
	// The old certificate is copied aside before the new one replaces it,
	// so the file is never missing and the old one never lost.
	res.Replaced = fmt.Sprintf("%s.replaced-%s", d.IntermediateCert(), opts.Now.UTC().Format("20060102T150405Z"))
	if err := writeFile(res.Replaced, certsPEM(inter), publicMode); err != nil {
		return nil, err
	}
	if err := writeFile(d.IntermediateCert(), certsPEM(widened), publicMode); err != nil {
		return nil, err
	}
	return res, nil
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path) //nolint:gosec // a file of the PKI directory
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	certs, err := pki.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs[0], nil
}

// readRootKey decrypts the root key at path and checks that it is root's.
func readRootKey(path string, password []byte, root *x509.Certificate) (crypto.Signer, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the admin names the file
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("--root-key: %s does not exist: bring the root key back from offline storage (and remove it again afterwards): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("--root-key: %w", err)
	}
	key, err := pemutil.ParseKey(data, pemutil.WithPassword(password))
	if err != nil {
		return nil, fmt.Errorf("--root-key %s: %w (wrong password?)", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("--root-key %s: %T is not a signing key", path, key)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(root.PublicKey) {
		return nil, fmt.Errorf("--root-key %s: %w", path, ErrNotRootKey)
	}
	return signer, nil
}
