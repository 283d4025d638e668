package stepca_test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/pkitest"
	"github.com/fleetprov/prov/pki/stepca"
)

// hostile is a TLS server with a certificate from ca's roots that answers
// every request with status and body.
func hostile(t *testing.T, ca *pkitest.CA, status int, body []byte) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{
		ca.TLSCert(t, pkitest.LeafSpec{IPs: []string{"127.0.0.1"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}),
	}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// clientOf is a client of url trusting ca, presenting a certificate from ca
// (for Renew).
func clientOf(t *testing.T, ca *pkitest.CA, url string) *stepca.Client {
	t.Helper()
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.LoadKeyPair(ca.KeyPair(t, pkitest.LeafSpec{URIs: []string{"spiffe://fleet.test/device/1a2b3c4d5e"}}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := stepca.New(url, roots, stepca.WithClientCertificate(kp))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Whatever answers in step-ca's place, each call ends with a clear error,
// never a panic, a hang on an endless body or a certificate made up from
// nothing.
func TestHostileAnswers(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	other := pkitest.NewCA(t, "other.test")
	_, csr := catest.NewCSR(t)
	huge := []byte(`{"certChain":["` + strings.Repeat("A", 1<<20) + `"]}`)
	stepcaError := []byte(`{"status":500,"message":"The certificate authority encountered an Internal Server Error. Please see the certificate authority logs for more info."}` + "\n")
	sign := func(c *stepca.Client) error { _, err := c.Sign(ctxT(t), csr, "ott"); return err }
	revoke := func(c *stepca.Client) error { return c.Revoke(ctxT(t), "1234", "ott", "test") }
	crl := func(c *stepca.Client) error { _, err := c.CRL(ctxT(t), ca.Inter); return err }
	for _, tc := range []struct {
		name   string
		status int
		body   []byte
		call   func(*stepca.Client) error
		check  func(*testing.T, error)
	}{
		{"sign: not JSON", http.StatusCreated, []byte("<html>welcome</html>"), sign, is(stepca.ErrBadAnswer)},
		{"sign: a huge body", http.StatusCreated, huge, sign, is(stepca.ErrBadAnswer)},
		{"sign: an empty chain", http.StatusCreated, []byte(`{"crt":"","ca":"","certChain":[]}`), sign, is(stepca.ErrBadAnswer)},
		{"sign: a chain that is not PEM", http.StatusCreated, []byte(`{"certChain":["not a certificate"]}`), sign, is(stepca.ErrBadAnswer)},
		{"sign: 500 in step-ca's error shape", http.StatusInternalServerError, stepcaError, sign, func(t *testing.T, err error) {
			var se *stepca.Error
			if !errors.As(err, &se) || se.Status != 500 || !strings.HasPrefix(se.Message, "The certificate authority encountered") {
				t.Fatalf("got %v; want *stepca.Error 500 with step-ca's message", err)
			}
		}},
		{"sign: 502 with a huge text body", http.StatusBadGateway, huge, sign, func(t *testing.T, err error) {
			var se *stepca.Error
			if !errors.As(err, &se) || se.Status != 502 || len(se.Message) > 600 {
				t.Fatalf("got %v; want *stepca.Error 502 with a short message", err)
			}
		}},
		{"revoke: 400 already revoked", http.StatusBadRequest,
			[]byte(`{"status":400,"message":"The request could not be completed: certificate with serial number '1234' is already revoked."}`),
			revoke, is(stepca.ErrAlreadyRevoked)},
		{"revoke: another 400", http.StatusBadRequest,
			[]byte(`{"status":400,"message":"The request could not be completed: reasonCode out of bounds."}`),
			revoke, func(t *testing.T, err error) {
				var se *stepca.Error
				if errors.Is(err, stepca.ErrAlreadyRevoked) || !errors.As(err, &se) || se.Status != 400 {
					t.Fatalf("got %v; want a plain *stepca.Error 400", err)
				}
			}},
		{"revoke: already revoked, but not a 400", http.StatusInternalServerError,
			[]byte(`{"status":500,"message":"certificate is already revoked"}`),
			revoke, func(t *testing.T, err error) {
				if err == nil || errors.Is(err, stepca.ErrAlreadyRevoked) {
					t.Fatalf("got %v; want an error that is not ErrAlreadyRevoked", err)
				}
			}},
		{"health: not ok", http.StatusOK, []byte(`{"status":"starting"}`), func(c *stepca.Client) error { return c.Health(ctxT(t)) }, is(stepca.ErrBadAnswer)},
		{"roots: none", http.StatusCreated, []byte(`{"crts":[]}`), func(c *stepca.Client) error { _, err := c.Roots(ctxT(t)); return err }, is(stepca.ErrBadAnswer)},
		{"renew: an empty chain", http.StatusCreated, []byte(`{}`), func(c *stepca.Client) error {
			_, err := c.Renew(ctxT(t))
			return err
		}, is(stepca.ErrBadAnswer)},
		{"crl: not DER", http.StatusOK, []byte("not a CRL"), crl, is(stepca.ErrBadAnswer)},
		{"crl: signed by another key", http.StatusOK, crlBy(t, other), crl, is(stepca.ErrCRLSignature)},
		{"crl: larger than any CRL", http.StatusOK, make([]byte, 33<<20), crl, is(stepca.ErrBadAnswer)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(clientOf(t, ca, hostile(t, ca, tc.status, tc.body)))
			if err == nil {
				t.Fatal("no error")
			}
			tc.check(t, err)
		})
	}
}

// A server whose certificate is not from the pinned roots is not step-ca.
func TestImpostor(t *testing.T) {
	ca, impostor := pkitest.NewCA(t, "fleet.test"), pkitest.NewCA(t, "fleet.test")
	c := clientOf(t, ca, hostile(t, impostor, http.StatusOK, []byte(`{"status":"ok"}`)))
	err := c.Health(ctxT(t))
	var ve *tls.CertificateVerificationError
	if !errors.As(err, &ve) {
		t.Fatalf("health at an impostor: %v; want a certificate verification error", err)
	}
}

func TestNewRefuses(t *testing.T) {
	ca := pkitest.NewCA(t, "fleet.test")
	roots, err := pki.ParseTrustBundle(ca.RootPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"http://ca.example:9000", "https://", "https://ca.example:9000/prefix", "ca.example:9000", "::"} {
		if _, err := stepca.New(u, roots); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
	if _, err := stepca.New("https://ca.example:9000", nil); err == nil {
		t.Error("New without roots accepted")
	}
	c, err := stepca.New("https://ca.example:9000/", roots)
	if err != nil {
		t.Fatal(err)
	}
	if c.SignAudience() != "https://ca.example:9000/1.0/sign" || c.RevokeAudience() != "https://ca.example:9000/1.0/revoke" {
		t.Fatalf("audiences %s %s", c.SignAudience(), c.RevokeAudience())
	}
}

func is(target error) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Fatalf("got %v; want %v", err, target)
		}
	}
}

// crlBy is an empty DER CRL signed by ca's intermediate.
func crlBy(t *testing.T, ca *pkitest.CA) []byte {
	t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
	}, ca.Inter, ca.InterKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
