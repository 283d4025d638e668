package stepca_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
)

func TestMain(m *testing.M) { os.Exit(catest.Main(m)) }

// The client against both step-cas a deployment may run on the same
// configuration: the one embedded in prov-pki ca (in this process) and the
// real step-ca binary.
func TestAgainstStepCA(t *testing.T) {
	t.Run("in-process", func(t *testing.T) { exercise(t, catest.Shared(t)) })
	t.Run("binary", func(t *testing.T) {
		bin := testenv.Tool(t, "step-ca", "install it with: CGO_ENABLED=0 go install github.com/smallstep/certificates/cmd/step-ca@v0.30.2")
		exercise(t, catest.RunBinary(t, bin, catest.NewPKI(t)))
	})
}

func exercise(t *testing.T, c *catest.CA) {
	roots, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	// The identity check as the proxy uses it: the real step-ca passes.
	client, err := stepca.New(c.CAURL, roots, stepca.WithCAIdentityCheck())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("health", func(t *testing.T) {
		if err := client.Health(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("roots", func(t *testing.T) {
		got, err := client.Roots(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		want := roots.Roots()
		if len(got) != 1 || !got[0].Equal(want[0]) {
			t.Fatalf("step-ca serves %d roots; want exactly the deployment's", len(got))
		}
	})

	t.Run("sign", func(t *testing.T) {
		def, err := time.ParseDuration(c.DeviceCertLifetime)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name     string
			lifetime time.Duration
		}{{"provisioner default", 0}, {"one hour", time.Hour}} {
			t.Run(tc.name, func(t *testing.T) {
				_, csr := catest.NewCSR(t)
				serial := newSerial(t)
				start := time.Now()
				chain, err := client.SignFor(ctxT(t), csr, signToken(t, c, client, serial, csr), tc.lifetime)
				if err != nil {
					t.Fatal(err)
				}
				id, err := roots.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}})
				if err != nil || id.Name != serial {
					t.Fatalf("signed chain: identity %v, %v", id, err)
				}
				if !bytes.Equal(chain[0].RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
					t.Fatal("the certificate is not for the CSR's key")
				}
				want := tc.lifetime
				if want == 0 {
					want = def
				}
				// step-ca backdates notBefore by a minute; notAfter is
				// counted from the request.
				if end := start.Add(want); chain[0].NotAfter.Before(end.Add(-2*time.Minute)) || chain[0].NotAfter.After(end.Add(2*time.Minute)) {
					t.Fatalf("notAfter %s; want about %s (lifetime %s)", chain[0].NotAfter, end, want)
				}
			})
		}
	})

	t.Run("revoke twice", func(t *testing.T) {
		leaf := deviceCert(t, c, client).leaf
		revoke(t, c, client, leaf)
		err := revokeErr(t, c, client, leaf.SerialNumber.String())
		if !errors.Is(err, stepca.ErrAlreadyRevoked) {
			t.Fatalf("second revocation: %v; want ErrAlreadyRevoked", err)
		}
		var se *stepca.Error
		if !errors.As(err, &se) || se.Status != http.StatusBadRequest {
			t.Fatalf("second revocation: %v; want step-ca's HTTP 400 as *stepca.Error", err)
		}
		// Another refusal is not taken for "already revoked": a token
		// for another serial.
		tok := revokeToken(t, c, client, newDecimalSerial(t))
		err = client.Revoke(ctxT(t), leaf.SerialNumber.String(), tok, "test")
		if err == nil || errors.Is(err, stepca.ErrAlreadyRevoked) || !errors.As(err, &se) {
			t.Fatalf("revocation with a token for another serial: %v; want a *stepca.Error that is not ErrAlreadyRevoked", err)
		}
	})

	t.Run("renew", func(t *testing.T) {
		dc := deviceCert(t, c, client)
		mtls, err := stepca.New(c.CAURL, roots, stepca.WithClientCertificate(dc.keyPair), stepca.WithCAIdentityCheck())
		if err != nil {
			t.Fatal(err)
		}
		chain, err := mtls.Renew(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		id, err := roots.Verify(chain, pki.VerifyOptions{KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}})
		if err != nil || id.Name != dc.serial {
			t.Fatalf("renewed chain: identity %v, %v", id, err)
		}
		if chain[0].SerialNumber.Cmp(dc.leaf.SerialNumber) == 0 {
			t.Fatal("the renewed certificate has the old serial")
		}
		if !bytes.Equal(chain[0].RawSubjectPublicKeyInfo, dc.leaf.RawSubjectPublicKeyInfo) {
			t.Fatal("the renewed certificate is for another key")
		}
		if _, err := client.Renew(ctxT(t)); !errors.Is(err, stepca.ErrNoClientCertificate) {
			t.Fatalf("renew without a client certificate: %v", err)
		}
		// step-ca refuses to renew a revoked certificate.
		revoke(t, c, client, dc.leaf)
		var se *stepca.Error
		if _, err := mtls.Renew(ctxT(t)); !errors.As(err, &se) {
			t.Fatalf("renewal of a revoked certificate: %v; want step-ca's refusal", err)
		}
	})

	t.Run("crl", func(t *testing.T) {
		leaf := deviceCert(t, c, client).leaf
		revoke(t, c, client, leaf)
		crl, err := client.CRL(ctxT(t), c.Intermediate(t))
		if err != nil {
			t.Fatal(err)
		}
		listed := false
		for _, e := range crl.RevokedCertificateEntries {
			listed = listed || e.SerialNumber.Cmp(leaf.SerialNumber) == 0
		}
		if !listed {
			t.Fatalf("the CRL (%d entries) does not list revoked serial %s", len(crl.RevokedCertificateEntries), leaf.SerialNumber)
		}
		other := pkitest.NewCA(t, "other.test")
		if _, err := client.CRL(ctxT(t), other.Inter); !errors.Is(err, stepca.ErrCRLSignature) {
			t.Fatalf("CRL checked against another CA's key: %v; want ErrCRLSignature", err)
		}
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newSerial is a fresh device serial (10 hex digits), so tests on the shared
// CA never meet each other's certificates.
func newSerial(t *testing.T) string {
	t.Helper()
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newDecimalSerial is a certificate serial number no certificate has.
func newDecimalSerial(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return new(big.Int).SetBytes(b).String()
}

// signToken is the proxy's token for serial's device identity, bound to csr.
func signToken(t *testing.T, c *catest.CA, client *stepca.Client, serial string, csr *x509.CertificateRequest) string {
	t.Helper()
	prov, err := c.ProxyProvisioner(catest.Proxy)
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.DeviceIdentity(c.TrustDomain, serial)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := prov.SignToken(token.SignRequest{Audience: client.SignAudience(), Subject: serial, SANs: []string{id.String()}, CSR: csr}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func revokeToken(t *testing.T, c *catest.CA, client *stepca.Client, serial string) string {
	t.Helper()
	admin, err := c.AdminProvisioner(catest.Password)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admin.RevokeToken(client.RevokeAudience(), serial, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func revokeErr(t *testing.T, c *catest.CA, client *stepca.Client, serial string) error {
	t.Helper()
	return client.Revoke(ctxT(t), serial, revokeToken(t, c, client, serial), "test")
}

func revoke(t *testing.T, c *catest.CA, client *stepca.Client, leaf *x509.Certificate) {
	t.Helper()
	if err := revokeErr(t, c, client, leaf.SerialNumber.String()); err != nil {
		t.Fatalf("revoke %s: %v", leaf.SerialNumber, err)
	}
}

type deviceCertificate struct {
	serial  string
	leaf    *x509.Certificate
	keyPair *pki.KeyPair
}

// deviceCert has step-ca sign a new device certificate and stores it with
// its key as the device does.
func deviceCert(t *testing.T, c *catest.CA, client *stepca.Client) deviceCertificate {
	t.Helper()
	key, csr := catest.NewCSR(t)
	serial := newSerial(t)
	chain, err := client.Sign(ctxT(t), csr, signToken(t, c, client, serial, csr))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pkitest.WriteFile(t, certFile, pkitest.PEM(chain...), 0o644)
	pkitest.WriteFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return deviceCertificate{serial: serial, leaf: chain[0], keyPair: kp}
}
