package deployment_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// Finding 5 of issue 13: step-ca's CRL carried a critical Issuing
// Distribution Point https://localhost/1.0/crl (the port dropped) and no
// certificate named a CRL Distribution Point, so OpenSSL judged the CRL out
// of scope for every certificate: `openssl verify -crl_check` said
// "different CRL scope" and Mosquitto with crlfile refused every client,
// valid ones included. With the real step-ca binary's CRL, both now accept
// a valid device and refuse a revoked one, every certificate names the
// CRL's own distribution point, and Mosquitto takes a refreshed CRL on
// SIGHUP, as docs/operations.md has an operator feed it.
func TestCRLWorksWithStandardTools(t *testing.T) {
	bin := catest.Binary(t)
	openssl := testenv.Tool(t, "openssl", "install Debian's openssl")
	c := catest.RunBinary(t, bin, catest.NewPKI(t))
	dir := t.TempDir()

	valid := issueDevice(t, c, serialA, dir)
	revoked := issueDevice(t, c, serialB, dir)
	_, beforePEM := fetchCRLPEM(t, c, openssl, filepath.Join(dir, "before"))
	c.Revoke(t, revoked.leaf, "finding 5")
	crl, crlPEM := fetchCRLPEM(t, c, openssl, filepath.Join(dir, "after"))
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, append(mustRead(t, c.RootCert()), mustRead(t, c.IntermediateCert())...), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("distribution points", func(t *testing.T) {
		idp := issuingDistributionPoint(t, crl)
		u, err := url.Parse(idp)
		if err != nil || u.Scheme != "https" || u.Port() == "" || u.Hostname() != "localhost" || u.Path != "/1.0/crl" {
			t.Fatalf("the CRL's issuing distribution point %q is not https://<ca host>:<port>/1.0/crl", idp)
		}
		certs := map[string]*x509.Certificate{"device": valid.leaf}
		for role, name := range map[pki.Role]string{pki.RoleCore: deployment.DefaultCoreName, pki.RoleProxy: catest.Proxy, pki.RoleAdmin: deployment.DefaultAdminName, pki.RoleSigner: deployment.DefaultSignerName} {
			certs[string(role)] = readCert(t, c.IdentityCert(role, name))
		}
		for what, cert := range certs {
			if !slices.Equal(cert.CRLDistributionPoints, []string{idp}) {
				t.Errorf("%s certificate: CRL distribution points %q; want the CRL's own %q", what, cert.CRLDistributionPoints, idp)
			}
		}
	})

	t.Run("openssl verify -crl_check", func(t *testing.T) {
		verify := func(certFile string) (string, error) {
			out, err := exec.Command(openssl, "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", crlPEM, certFile).CombinedOutput() //nolint:gosec // a test tool
			return string(out), err
		}
		for what, f := range map[string]string{"valid device": valid.certFile, "core": c.IdentityCert(pki.RoleCore, deployment.DefaultCoreName)} {
			if out, err := verify(f); err != nil {
				t.Errorf("%s certificate refused: %v\n%s", what, err, out)
			}
		}
		out, err := verify(revoked.certFile)
		if err == nil || !strings.Contains(out, "certificate revoked") {
			t.Errorf("revoked device certificate: %v; want \"certificate revoked\":\n%s", err, out)
		}
	})

	t.Run("mosquitto crlfile", func(t *testing.T) {
		mosquitto := testenv.Tool(t, "mosquitto", "install Debian's mosquitto")
		bundle, err := pki.LoadTrustBundle(c.RootCert())
		if err != nil {
			t.Fatal(err)
		}
		// The broker starts with the CRL from before the revocation: it
		// accepts both devices (today's main refused both).
		brokerCRL := filepath.Join(dir, "broker-crl.pem")
		replaceFile(t, brokerCRL, mustRead(t, beforePEM))
		core := deployment.DefaultCoreName
		sock, hup := mosquittoWithCRL(t, mosquitto, dir, fmt.Sprintf("cafile %s\ncrlfile %s\ncertfile %s\nkeyfile %s\n",
			caFile, brokerCRL, c.IdentityCert(pki.RoleCore, core), c.IdentityKey(pki.RoleCore, core)))
		for _, d := range []*device{valid, revoked} {
			if err := mqttConnect(sock, bundle, d); err != nil {
				t.Fatalf("device %s refused by mosquitto with a CRL that does not list it: %v", d.serial, err)
			}
		}
		// The refresh: the new CRL replaces the file, SIGHUP reloads it.
		replaceFile(t, brokerCRL, mustRead(t, crlPEM))
		hup()
		err = testenv.WaitFor(10*time.Second, func() error {
			if err := mqttConnect(sock, bundle, revoked); err == nil {
				return errors.New("the revoked device is still accepted")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("after the refreshed CRL and SIGHUP: %v", err)
		}
		if err := mqttConnect(sock, bundle, valid); err != nil {
			t.Errorf("valid device refused by mosquitto with the refreshed CRL: %v", err)
		}
	})
}

// fetchCRLPEM fetches the CA's CRL as an operator does: DER from /1.0/crl
// (its signature checked), written to base.der and converted by OpenSSL to
// base.pem.
func fetchCRLPEM(t *testing.T, c *catest.CA, openssl, base string) (*x509.RevocationList, string) {
	t.Helper()
	crl := c.CRL(t)
	if err := os.WriteFile(base+".der", crl.Raw, 0o600); err != nil {
		t.Fatal(err)
	}
	runTool(t, openssl, "crl", "-inform", "DER", "-in", base+".der", "-out", base+".pem")
	return crl, base + ".pem"
}

// replaceFile replaces path with data by a rename, as a refresh must: a
// reader never sees half a file.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// device is a device certificate signed by the CA, written as a device
// holds it.
type device struct {
	serial   string
	key      *ecdsa.PrivateKey
	chain    []*x509.Certificate
	leaf     *x509.Certificate
	certFile string // leaf and intermediate, PEM
}

func issueDevice(t *testing.T, c *catest.CA, serial, dir string) *device {
	t.Helper()
	key, csr := deviceCSR(t, nil)
	chain, err := c.Client.Sign(context.Background(), csr, proxyToken(t, c, serial, csr))
	if err != nil {
		t.Fatalf("sign %s: %v", serial, err)
	}
	var data []byte
	for _, cert := range chain {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	f := filepath.Join(dir, serial+".pem")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return &device{serial: serial, key: key, chain: chain, leaf: chain[0], certFile: f}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCertificates(mustRead(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func runTool(t *testing.T, bin string, args ...string) {
	t.Helper()
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil { //nolint:gosec // a test tool
		t.Fatalf("%s %v: %v\n%s", filepath.Base(bin), args, err, out)
	}
}

// issuingDistributionPoint is the one full-name URI of crl's Issuing
// Distribution Point extension (RFC 5280 5.2.5), which must be critical.
func issuingDistributionPoint(t *testing.T, crl *x509.RevocationList) string {
	t.Helper()
	oid := asn1.ObjectIdentifier{2, 5, 29, 28}
	for _, e := range crl.Extensions {
		if !e.Id.Equal(oid) {
			continue
		}
		if !e.Critical {
			t.Error("the issuing distribution point is not critical")
		}
		// IssuingDistributionPoint ::= SEQUENCE { distributionPoint [0]
		// DistributionPointName ::= CHOICE { fullName [0] GeneralNames } ...}
		var idp struct {
			DistributionPoint struct {
				FullName []asn1.RawValue `asn1:"optional,tag:0"`
			} `asn1:"optional,tag:0"`
		}
		rest, err := asn1.Unmarshal(e.Value, &idp)
		names := idp.DistributionPoint.FullName
		if err != nil || len(rest) > 0 || len(names) != 1 || names[0].Class != asn1.ClassContextSpecific || names[0].Tag != 6 { // uniformResourceIdentifier [6]
			t.Fatalf("issuing distribution point %x is not one full-name URI (%v)", e.Value, err)
		}
		return string(names[0].Bytes)
	}
	t.Fatal("the CRL has no issuing distribution point")
	return ""
}

// mosquittoWithCRL runs mosquitto until the test ends with one TLS
// listener on a Unix socket in dir (so no port is picked), client
// certificates required, the TLS lines given (cafile, crlfile, certfile,
// keyfile), and returns the socket's path once it accepts, and a function
// that sends it SIGHUP (reload).
func mosquittoWithCRL(t *testing.T, bin, dir, tlsLines string) (sock string, hup func()) {
	t.Helper()
	sock = filepath.Join(dir, "mqtt.sock")
	conf := filepath.Join(dir, "mosquitto.conf")
	// As root, mosquitto would drop to its own user and lose the keys in
	// their 0700 directories.
	cfg := "per_listener_settings false\nuser root\nlog_dest stderr\npersistence false\nallow_anonymous false\n" +
		"listener 0 " + sock + "\n" + tlsLines +
		"require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.3\n"
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf) //nolint:gosec // a test tool
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("mosquitto:\n%s", out.String())
		}
	})
	err := testenv.WaitFor(10*time.Second, func() error {
		select {
		case <-exited:
			return testenv.Final(fmt.Errorf("mosquitto exited (%w):\n%s", cmp.Or(exitErr, errExitedZero), out.String()))
		default:
		}
		conn, err := net.Dial("unix", sock)
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return sock, func() {
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP mosquitto: %v", err)
		}
	}
}

// mqttConnect connects to the broker on sock over TLS as d and sends an
// MQTT 3.1.1 CONNECT; nil means CONNACK with return code 0.
func mqttConnect(sock string, bundle *pki.TrustBundle, d *device) error {
	raw, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	cert := tls.Certificate{PrivateKey: d.key, Leaf: d.leaf}
	for _, c := range d.chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	conn := tls.Client(raw, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: bundle.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{cert}})
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	id := []byte(d.serial)
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, byte(len(id) >> 8), byte(len(id))}, id...)
	if _, err := conn.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		return fmt.Errorf("CONNECT: %w", err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		return fmt.Errorf("CONNACK: %w", err)
	}
	if !bytes.Equal(ack, []byte{0x20, 2, 0, 0}) {
		return fmt.Errorf("CONNACK %x: %w", ack, errRefused)
	}
	return nil
}

var (
	errRefused    = errors.New("refused")
	errExitedZero = errors.New("exit status 0")
)

// The CRL's URL is the CA URL of a real deployment, its port included
// (step-ca's own default drops it), in step-ca's configuration (the CRL's
// issuing distribution point) and in the certificates init issues.
func TestCRLURLIsTheCAs(t *testing.T) {
	d := catest.NewPKI(t, func(o *deployment.InitOptions) {
		o.CAAddress = ":9443"
		o.CAHosts = []string{"ca.fleet.test", "10.0.0.1"}
	})
	const want = "https://ca.fleet.test:9443/1.0/crl"
	var cfg struct {
		CRL struct {
			Enabled          bool   `json:"enabled"`
			GenerateOnRevoke bool   `json:"generateOnRevoke"`
			IDPURL           string `json:"idpURL"`
		} `json:"crl"`
	}
	if err := json.Unmarshal(mustRead(t, d.CAConfig()), &cfg); err != nil {
		t.Fatal(err)
	}
	if !cfg.CRL.Enabled || !cfg.CRL.GenerateOnRevoke || cfg.CRL.IDPURL != want {
		t.Errorf("ca.json crl block %+v; want enabled, generated on revoke, idpURL %s", cfg.CRL, want)
	}
	for role, name := range map[pki.Role]string{pki.RoleCore: deployment.DefaultCoreName, pki.RoleProxy: catest.Proxy, pki.RoleAdmin: deployment.DefaultAdminName, pki.RoleSigner: deployment.DefaultSignerName} {
		if got := readCert(t, d.IdentityCert(role, name)).CRLDistributionPoints; !slices.Equal(got, []string{want}) {
			t.Errorf("%s certificate: CRL distribution points %q; want %s", role, got, want)
		}
	}
}
