package pki

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"time"
)

// KeyPair is a certificate chain and its private key, loaded from PEM files
// and swappable at run time (after a renewal) without rebuilding the TLS
// configurations that use it.
type KeyPair struct {
	certFile, keyFile string
	// signer, if set, is the key, held where no file has it (the
	// device's TPM); keyFile is then unused.
	signer crypto.Signer
	cur    atomic.Pointer[tls.Certificate]
}

// LoadKeyPair reads a PEM certificate chain (leaf first) and its PEM private
// key. The key file must not be readable by group or others.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	kp := &KeyPair{certFile: certFile, keyFile: keyFile}
	if err := kp.Reload(); err != nil {
		return nil, err
	}
	return kp, nil
}

// LoadSignerKeyPair reads a PEM certificate chain (leaf first) for a key
// that is not in a file: a crypto.Signer over a TPM. Reload re-reads the
// chain only, and accepts it only for that key (a renewal keeps the key).
func LoadSignerKeyPair(certFile string, key crypto.Signer) (*KeyPair, error) {
	kp := &KeyPair{certFile: certFile, signer: key}
	if err := kp.Reload(); err != nil {
		return nil, err
	}
	return kp, nil
}

// Reload re-reads both files (the chain only, for a signer's pair); on
// any error the current pair stays in use.
func (kp *KeyPair) Reload() error {
	var (
		c   *tls.Certificate
		err error
	)
	if kp.signer != nil {
		c, err = readSignerPair(kp.certFile, kp.signer)
	} else {
		c, err = readKeyPair(kp.certFile, kp.keyFile)
	}
	if err != nil {
		return err
	}
	kp.cur.Store(c)
	return nil
}

// Certificate returns the current pair, for tls.Config callbacks.
func (kp *KeyPair) Certificate() *tls.Certificate { return kp.cur.Load() }

// Leaf returns the current leaf certificate.
func (kp *KeyPair) Leaf() *x509.Certificate { return kp.cur.Load().Leaf }

// Chain returns the current chain, leaf first. The files were parsed when
// loaded, so parsing again cannot fail; a certificate that somehow does is
// left out.
func (kp *KeyPair) Chain() []*x509.Certificate {
	var out []*x509.Certificate
	for _, der := range kp.cur.Load().Certificate {
		if c, err := x509.ParseCertificate(der); err == nil {
			out = append(out, c)
		}
	}
	return out
}

func readSignerPair(certFile string, key crypto.Signer) (*tls.Certificate, error) {
	certPEM, err := readLimited(certFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeyPair, err)
	}
	chain, err := ParseCertificates(certPEM)
	if err != nil || len(chain) == 0 {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadKeyPair, certFile, err)
	}
	mine, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: the key: %w", ErrBadKeyPair, err)
	}
	if !bytes.Equal(mine, chain[0].RawSubjectPublicKeyInfo) {
		return nil, fmt.Errorf("%w: %s is not for the key", ErrBadKeyPair, certFile)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, cert := range chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}

func readKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := readLimited(certFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeyPair, err)
	}
	if _, err := ParseCertificates(certPEM); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadKeyPair, certFile, err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeyPair, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: key file %s has mode %04o; it must be readable by its owner only (chmod 600)",
			ErrBadKeyPair, keyFile, fi.Mode().Perm())
	}
	keyPEM, err := readLimited(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKeyPair, err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s with %s: %w", ErrBadKeyPair, certFile, keyFile, err)
	}
	return &c, nil
}

// ClientCerts is what a server asks of its clients' certificates.
type ClientCerts int

const (
	// RequireClientCert: every client presents a certificate of the
	// deployment (the default).
	RequireClientCert ClientCerts = iota
	// OptionalClientCert: a client may come without one (health checks);
	// one it presents is verified, and the server checks PeerIdentity per
	// route.
	OptionalClientCert
	// NoClientCert: the server asks for none (the proxy's factory side,
	// where new devices have no certificate yet).
	NoClientCert
)

// ServerOptions tune ServerTLSConfig.
type ServerOptions struct {
	// ClientCerts defaults to RequireClientCert.
	ClientCerts ClientCerts
	// ClientRoles, if set, are the only roles that may complete a handshake.
	ClientRoles []Role
	// CheckRevoked, if set, is asked about every client leaf; an error ends
	// the handshake.
	CheckRevoked func(*x509.Certificate) error
}

// ServerTLSConfig is a TLS 1.3 server configuration with this pair as the
// server certificate and client certificates verified against the bundle.
// A client certificate with an ambiguous or foreign identity fails the
// handshake.
func ServerTLSConfig(kp *KeyPair, bundle *TrustBundle, opts ServerOptions) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.Certificate(), nil
		},
	}
	if opts.ClientCerts == NoClientCert {
		return cfg
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	if opts.ClientCerts == OptionalClientCert {
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	cfg.ClientCAs = bundle.Pool()
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) == 0 {
			return nil // no client certificate; ClientAuth said that is allowed
		}
		leaf := cs.VerifiedChains[0][0]
		if _, err := bundle.identify(leaf, opts.ClientRoles); err != nil {
			return err
		}
		if opts.CheckRevoked != nil {
			return opts.CheckRevoked(leaf)
		}
		return nil
	}
	return cfg
}

// ClientOptions tune ClientTLSConfig.
type ClientOptions struct {
	// ServerName overrides the host name checked in the server certificate.
	// With a Floor, set it when the server is reached by IP address.
	ServerName string
	// ServerRoles, if set, are the roles the server must have (a proxy's
	// certificate must not pass for core's on the same host). Unset, any
	// certificate from the root valid for the host name is accepted; that
	// is right only for step-ca's own listener.
	ServerRoles []Role
	// Floor, if set, is the earliest time the client believes it is; the
	// server's chain may raise it (see Floor).
	Floor *Floor
	// Now is the clock; nil means time.Now. A test seam.
	Now func() time.Time
}

// ClientTLSConfig is a TLS 1.3 client configuration that trusts only the
// bundle's roots and, when kp is not nil, presents kp as client certificate.
func ClientTLSConfig(kp *KeyPair, bundle *TrustBundle, opts ClientOptions) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    bundle.Pool(),
		ServerName: opts.ServerName,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(opts.ServerRoles) == 0 {
				return nil
			}
			if len(cs.VerifiedChains) == 0 {
				return fmt.Errorf("%w: server sent no verified chain", ErrUntrusted)
			}
			_, err := bundle.identify(cs.VerifiedChains[0][0], opts.ServerRoles)
			return err
		},
	}
	if opts.Floor != nil {
		// crypto/tls checks a chain at one time, fixed before it sees the
		// chain; checking it at the chain's own issue time as well takes
		// verifying it here.
		cfg.InsecureSkipVerify = true //nolint:gosec // VerifyConnection verifies the chain against the pinned roots and the host name
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return bundle.verifyServer(cs, opts)
		}
	} else if opts.Now != nil {
		cfg.Time = opts.Now
	}
	if kp != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.Certificate(), nil
		}
	}
	return cfg
}

// verifyServer is what crypto/tls does for a client, at the floor: the
// server's chain leads to the roots, is for server authentication and
// names the host; then its role, if asked; then the chain raises the
// floor. The host is the name the connection sent (SNI: the
// configuration's ServerName, as the HTTP transport or the caller set it),
// else, for an IP address, which SNI leaves out, ClientOptions.ServerName;
// never none.
func (b *TrustBundle) verifyServer(cs tls.ConnectionState, opts ClientOptions) error {
	certs := cs.PeerCertificates
	if len(certs) == 0 {
		return fmt.Errorf("%w: server sent no certificate", ErrUntrusted)
	}
	host := cs.ServerName
	if host == "" {
		host = opts.ServerName
	}
	if host == "" {
		return fmt.Errorf("%w: no server name to check %q against", ErrUntrusted, certs[0].Subject.CommonName)
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	w, err := verifyAt(certs, now(), opts.Floor, func(at time.Time) (window, error) {
		chains, err := certs[0].Verify(x509.VerifyOptions{
			Roots:         b.pool,
			Intermediates: inter,
			DNSName:       host,
			CurrentTime:   at,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return window{}, classifyVerifyError(certs[0], at, err)
		}
		return pathWindow(chains[0]), nil
	})
	if err != nil {
		return err
	}
	if len(opts.ServerRoles) > 0 {
		if _, err := b.identify(certs[0], opts.ServerRoles); err != nil {
			return err
		}
	}
	_ = opts.Floor.Raise(w.notBefore) // see Verify
	return nil
}

// PeerIdentity returns the identity of the verified peer of a connection.
// The handshake already checked it (ServerTLSConfig); this reads it again
// for authorisation, from the verified chain only.
func PeerIdentity(cs *tls.ConnectionState) (Identity, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: no verified client certificate", ErrNoIdentity)
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}

// identify reads a verified leaf's identity and checks trust domain and role.
func (b *TrustBundle) identify(leaf *x509.Certificate, roles []Role) (Identity, error) {
	id, err := IdentityOf(leaf)
	if err != nil {
		return Identity{}, err
	}
	if id.TrustDomain != b.trustDomain {
		return Identity{}, fmt.Errorf("%w: %s is not in %s", ErrForeignTrustDomain, id, b.trustDomain)
	}
	if len(roles) > 0 && !slices.Contains(roles, id.Role) {
		return Identity{}, fmt.Errorf("%w: %s (want %v)", ErrRoleNotAllowed, id, roles)
	}
	return id, nil
}
