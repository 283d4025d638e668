package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
)

// handshake runs a real TLS handshake over a pipe and returns what each side
// saw.
func handshake(t *testing.T, server, client *tls.Config) (serverState tls.ConnectionState, serverErr, clientErr error) {
	t.Helper()
	a, b := net.Pipe()
	defer func() { _ = a.Close(); _ = b.Close() }()
	_ = a.SetDeadline(time.Now().Add(5 * time.Second))
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	srv := tls.Server(a, server)
	done := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err != nil {
			_ = a.Close() // unblock the client
		}
		done <- err
	}()
	cl := tls.Client(b, client)
	clientErr = cl.Handshake()
	if clientErr == nil {
		// In TLS 1.3 the client finishes first; a read sees a server alert.
		_ = cl.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var buf [1]byte
		if _, err := cl.Read(buf[:]); err != nil && !isTimeout(err) {
			clientErr = err
		}
	}
	if clientErr != nil {
		_ = b.Close()
	}
	serverErr = <-done
	return srv.ConnectionState(), serverErr, clientErr
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestMutualTLS(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	other := pkitest.NewCA(t, "fleet.test")
	bundle, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	coreCert, coreKey := ca.KeyPair(t, pkitest.LeafSpec{CN: "core/main", URIs: []string{"spiffe://fleet.test/core/main"}, DNS: []string{"core.example.com"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	coreKP, err := pki.LoadKeyPair(coreCert, coreKey)
	if err != nil {
		t.Fatal(err)
	}
	proxyCert, proxyKey := ca.KeyPair(t, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/proxy/p1"}, DNS: []string{"core.example.com"}})
	proxyKP, err := pki.LoadKeyPair(proxyCert, proxyKey)
	if err != nil {
		t.Fatal(err)
	}
	device := func(s pkitest.LeafSpec) *tls.Config {
		c := ca.TLSCert(t, s)
		cfg := pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: "core.example.com", ServerRoles: []pki.Role{pki.RoleCore}})
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		return cfg
	}
	dev := "spiffe://fleet.test/device/1a2b3c4d5e"
	devEKU := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	serverFor := func(o pki.ServerOptions) *tls.Config { return pki.ServerTLSConfig(coreKP, bundle, o) }

	t.Run("device to core", func(t *testing.T) {
		st, serr, cerr := handshake(t, serverFor(pki.ServerOptions{ClientRoles: []pki.Role{pki.RoleDevice}}), device(pkitest.LeafSpec{CN: "1a2b3c4d5e", URIs: []string{dev}, EKU: devEKU}))
		if serr != nil || cerr != nil {
			t.Fatalf("server %v, client %v", serr, cerr)
		}
		id, err := pki.PeerIdentity(&st)
		if err != nil || id.String() != dev {
			t.Fatalf("peer identity %v, %v", id, err)
		}
		if st.Version != tls.VersionTLS13 {
			t.Errorf("TLS version %x", st.Version)
		}
	})
	for _, tc := range []struct {
		name   string
		server *tls.Config
		client *tls.Config
	}{
		{"client from another root", serverFor(pki.ServerOptions{}), func() *tls.Config {
			c := other.TLSCert(t, pkitest.LeafSpec{URIs: []string{dev}, EKU: devEKU})
			cfg := device(pkitest.LeafSpec{URIs: []string{dev}, EKU: devEKU})
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
			return cfg
		}()},
		{"no client certificate", serverFor(pki.ServerOptions{}), pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: "core.example.com"})},
		{"ambiguous client identity", serverFor(pki.ServerOptions{}), device(pkitest.LeafSpec{URIs: []string{dev, "spiffe://fleet.test/device/0000000000"}, EKU: devEKU})},
		{"client CN disagrees with SAN", serverFor(pki.ServerOptions{}), device(pkitest.LeafSpec{CN: "0000000000", URIs: []string{dev}, EKU: devEKU})},
		{"client of a foreign trust domain", serverFor(pki.ServerOptions{}), device(pkitest.LeafSpec{URIs: []string{"spiffe://other.test/device/1a2b3c4d5e"}, EKU: devEKU})},
		{"client role not allowed", serverFor(pki.ServerOptions{ClientRoles: []pki.Role{pki.RoleAdmin}}), device(pkitest.LeafSpec{URIs: []string{dev}, EKU: devEKU})},
		{"client certificate without clientAuth", serverFor(pki.ServerOptions{}), device(pkitest.LeafSpec{URIs: []string{dev}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})},
		{"expired client certificate", serverFor(pki.ServerOptions{}), device(pkitest.LeafSpec{URIs: []string{dev}, EKU: devEKU, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})},
		{"revoked client", serverFor(pki.ServerOptions{CheckRevoked: func(*x509.Certificate) error { return errors.New("revoked") }}), device(pkitest.LeafSpec{URIs: []string{dev}, EKU: devEKU})},
		{"a proxy posing as core", pki.ServerTLSConfig(proxyKP, bundle, pki.ServerOptions{}), device(pkitest.LeafSpec{URIs: []string{dev}, EKU: devEKU})},
		{"server name mismatch", serverFor(pki.ServerOptions{}), func() *tls.Config {
			cfg := device(pkitest.LeafSpec{URIs: []string{dev}, EKU: devEKU})
			cfg.ServerName = "elsewhere.example.com"
			return cfg
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, serr, cerr := handshake(t, tc.server, tc.client)
			if serr == nil && cerr == nil {
				t.Fatal("handshake succeeded")
			}
			t.Logf("server: %v; client: %v", serr, cerr)
		})
	}

	t.Run("client certificate policies", func(t *testing.T) {
		anon := pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: "core.example.com", ServerRoles: []pki.Role{pki.RoleCore}})
		foreign := device(pkitest.LeafSpec{URIs: []string{"spiffe://other.test/device/1a2b3c4d5e"}, EKU: devEKU})
		for _, tc := range []struct {
			name   string
			policy pki.ClientCerts
			client *tls.Config
			ok     bool
			asked  bool // the client's certificate reached the server
		}{
			{"required, none", pki.RequireClientCert, anon, false, false},
			{"optional, none", pki.OptionalClientCert, anon, true, false},
			{"optional, foreign identity", pki.OptionalClientCert, foreign, false, false},
			{"optional, device", pki.OptionalClientCert, device(pkitest.LeafSpec{CN: "1a2b3c4d5e", URIs: []string{dev}, EKU: devEKU}), true, true},
			{"none asked, none", pki.NoClientCert, anon, true, false},
			{"none asked, foreign identity not even read", pki.NoClientCert, foreign, true, false},
		} {
			st, serr, cerr := handshake(t, serverFor(pki.ServerOptions{ClientCerts: tc.policy}), tc.client)
			if ok := serr == nil && cerr == nil; ok != tc.ok {
				t.Errorf("%s: server %v, client %v", tc.name, serr, cerr)
				continue
			}
			if tc.ok && (len(st.PeerCertificates) > 0) != tc.asked {
				t.Errorf("%s: server saw %d client certificates", tc.name, len(st.PeerCertificates))
			}
		}
	})

	t.Run("client clock in 1970", func(t *testing.T) {
		c := ca.TLSCert(t, pkitest.LeafSpec{CN: "1a2b3c4d5e", URIs: []string{dev}, EKU: devEKU})
		epoch := func() time.Time { return time.Unix(0, 0) }
		for _, tc := range []struct {
			name  string
			floor *pki.Floor
			ok    bool
		}{
			{"no floor: the server certificate is not yet valid", nil, false},
			{"floor now: verifies", pki.NewFloor(time.Now(), nil), true},
		} {
			cfg := pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: "core.example.com", ServerRoles: []pki.Role{pki.RoleCore},
				Now: epoch, Floor: tc.floor})
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
			_, serr, cerr := handshake(t, serverFor(pki.ServerOptions{}), cfg)
			if ok := serr == nil && cerr == nil; ok != tc.ok {
				t.Errorf("%s: server %v, client %v", tc.name, serr, cerr)
			}
		}
	})
}

func TestLoadKeyPair(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	spec := pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/core/main"}}
	certFile, keyFile := ca.KeyPair(t, spec)
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	first := kp.Leaf().SerialNumber

	t.Run("reload swaps the pair", func(t *testing.T) {
		c2, k2 := ca.KeyPair(t, spec)
		copyFile(t, c2, certFile, 0o644)
		copyFile(t, k2, keyFile, 0o600)
		if err := kp.Reload(); err != nil {
			t.Fatal(err)
		}
		if kp.Leaf().SerialNumber.Cmp(first) == 0 {
			t.Fatal("reload kept the old certificate")
		}
	})
	t.Run("failed reload keeps the current pair", func(t *testing.T) {
		current := kp.Leaf().SerialNumber
		pkitest.WriteFile(t, certFile, []byte("garbage"), 0o644)
		if err := kp.Reload(); !errors.Is(err, pki.ErrBadKeyPair) {
			t.Fatalf("reload of garbage: %v", err)
		}
		if kp.Leaf().SerialNumber.Cmp(current) != 0 {
			t.Fatal("a failed reload changed the pair")
		}
	})
	for name, setup := range map[string]func(t *testing.T) (string, string){
		"world-readable key": func(t *testing.T) (string, string) {
			c, k := ca.KeyPair(t, spec)
			if err := os.Chmod(k, 0o644); err != nil {
				t.Fatal(err)
			}
			return c, k
		},
		"key of another certificate": func(t *testing.T) (string, string) {
			c, _ := ca.KeyPair(t, spec)
			_, k := ca.KeyPair(t, spec)
			return c, k
		},
		"missing key": func(t *testing.T) (string, string) {
			c, _ := ca.KeyPair(t, spec)
			return c, filepath.Join(t.TempDir(), "nope")
		},
		"empty certificate file": func(t *testing.T) (string, string) {
			c, k := ca.KeyPair(t, spec)
			pkitest.WriteFile(t, c, nil, 0o644)
			return c, k
		},
	} {
		t.Run(name, func(t *testing.T) {
			c, k := setup(t)
			if _, err := pki.LoadKeyPair(c, k); !errors.Is(err, pki.ErrBadKeyPair) {
				t.Fatalf("LoadKeyPair: %v; want ErrBadKeyPair", err)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	pkitest.WriteFile(t, to, b, mode)
}

// A pair whose key is a signer held elsewhere (the device's TPM): loaded
// with a chain for that key, reloaded only with a chain for that key (a
// renewal keeps the key), refused with a chain for another.
func TestLoadSignerKeyPair(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	spec := pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/device/0123456789"}}
	leaf, key := ca.Leaf(t, spec)
	certFile := filepath.Join(t.TempDir(), "cert.pem")
	pkitest.WriteFile(t, certFile, pemCert(leaf), 0o644)
	kp, err := pki.LoadSignerKeyPair(certFile, key)
	if err != nil {
		t.Fatal(err)
	}
	if kp.Certificate().PrivateKey != key || !kp.Leaf().Equal(leaf) {
		t.Fatal("the pair is not the signer's and its certificate")
	}
	other, _ := ca.Leaf(t, spec)
	pkitest.WriteFile(t, certFile, pemCert(other), 0o644)
	if err := kp.Reload(); !errors.Is(err, pki.ErrBadKeyPair) || !kp.Leaf().Equal(leaf) {
		t.Fatalf("reload with another key's certificate: %v", err)
	}
	if _, err := pki.LoadSignerKeyPair(certFile, key); !errors.Is(err, pki.ErrBadKeyPair) {
		t.Fatalf("another key's certificate: %v", err)
	}
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
