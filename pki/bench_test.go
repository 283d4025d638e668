package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/pkitest"
)

// BenchmarkVerifyDeviceChain is what core pays per new device connection on
// top of the handshake's own chain check, and what a device pays per signer
// check.
func BenchmarkVerifyDeviceChain(b *testing.B) {
	ca := pkitest.NewCA(b, "fleet.test")
	bundle, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		b.Fatal(err)
	}
	leaf, _ := ca.Leaf(b, pkitest.LeafSpec{CN: "1a2b3c4d5e", URIs: []string{"spiffe://fleet.test/device/1a2b3c4d5e"}})
	chain := []*x509.Certificate{leaf, ca.Inter}
	opts := pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bundle.Verify(chain, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandshake compares a full mTLS handshake with this package's
// configurations (identity, trust domain and role checks) against bare Go
// TLS 1.3 configurations with the same certificates, in one run.
func BenchmarkHandshake(b *testing.B) {
	ca := pkitest.NewCA(b, "fleet.test")
	bundle, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		b.Fatal(err)
	}
	certFile, keyFile := ca.KeyPair(b, pkitest.LeafSpec{CN: "core/main", URIs: []string{"spiffe://fleet.test/core/main"}, DNS: []string{"core.example.com"}})
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		b.Fatal(err)
	}
	devCert := ca.TLSCert(b, pkitest.LeafSpec{CN: "1a2b3c4d5e", URIs: []string{"spiffe://fleet.test/device/1a2b3c4d5e"}})

	ours := func() (*tls.Config, *tls.Config) {
		s := pki.ServerTLSConfig(kp, bundle, pki.ServerOptions{ClientRoles: []pki.Role{pki.RoleDevice}})
		c := pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: "core.example.com", ServerRoles: []pki.Role{pki.RoleCore}})
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &devCert, nil }
		return s, c
	}
	bare := func() (*tls.Config, *tls.Config) {
		s := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*kp.Certificate()}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: bundle.Pool()}
		c := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: bundle.Pool(), ServerName: "core.example.com", Certificates: []tls.Certificate{devCert}}
		return s, c
	}
	for _, bc := range []struct {
		name string
		cfgs func() (*tls.Config, *tls.Config)
	}{{"bare", bare}, {"pki", ours}} {
		b.Run(bc.name, func(b *testing.B) {
			s, c := bc.cfgs()
			for b.Loop() {
				if err := pipeHandshake(s, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// pipeHandshake runs both sides of one handshake to completion, including
// the server's check of the client certificate.
func pipeHandshake(server, client *tls.Config) error {
	a, b := net.Pipe()
	defer func() { _ = a.Close(); _ = b.Close() }()
	srv := tls.Server(a, server)
	done := make(chan error, 1)
	go func() { done <- srv.Handshake() }()
	if err := tls.Client(b, client).Handshake(); err != nil {
		return err
	}
	return <-done
}
