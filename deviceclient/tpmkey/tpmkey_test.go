package tpmkey_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/deviceclient/tpmkey/tpmkeytest"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/proxy/attest"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

func open(t *testing.T, sw *swtpm.TPM) *tpmkey.TPM {
	t.Helper()
	tp, err := tpmkey.Open(sw.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	return tp
}

// newKey makes a device key in tp and loads it until the test ends.
func newKey(t testing.TB, tp *tpmkey.TPM) (*tpmkey.Blob, *tpmkey.Key) {
	t.Helper()
	blob, err := tp.Create()
	if err != nil {
		t.Fatal(err)
	}
	k, err := tp.Load(blob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return blob, k
}

func verifies(t *testing.T, k crypto.Signer) {
	t.Helper()
	digest := sha256.Sum256([]byte("a TLS handshake's transcript"))
	sig, err := k.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("the TPM's signature does not verify with the key's public key")
	}
	other := sha256.Sum256([]byte("another message"))
	if ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), other[:], sig) {
		t.Fatal("the signature verifies for another digest")
	}
}

// A key made in the TPM signs (crypto/ecdsa verifies its signatures, a
// Go TLS server its handshake), is fixedTPM|fixedParent|
// sensitiveDataOrigin and not a decryption or restricted key, its blob
// holds no private key in the clear, and it loads again after a power
// cycle, both anew and in the signer that was loaded before.
func TestKeyInTPM(t *testing.T) {
	sw := swtpm.Start(t)
	tp := open(t, sw)
	blob, k := newKey(t, tp)
	verifies(t, k)
	tlsHandshake(t, k)
	if _, err := k.Sign(rand.Reader, make([]byte, 48), crypto.SHA384); err == nil {
		t.Error("the key signed a SHA-384 digest; its scheme is ECDSA-SHA256")
	}
	a := k.Attributes()
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt || a.Decrypt || a.Restricted {
		t.Errorf("attributes %+v: want fixedTPM, fixedParent, sensitiveDataOrigin, sign; not decrypt, not restricted", a)
	}
	if pub := k.Public().(*ecdsa.PublicKey); pub.Curve != elliptic.P256() {
		t.Errorf("curve %v, want P-256", pub.Curve.Params().Name)
	}
	parsed, err := tpmkey.ParseBlob(blob.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob.Marshal(), []byte("PRIVATE KEY")) || parsed.TPM != sw.Path() {
		t.Errorf("key file %s", blob.Marshal())
	}

	sw.Restart()
	verifies(t, k) // the signer loads the key again into the reset TPM
	k2, err := tpmkey.OpenKey(blob.Marshal(), "")
	if err != nil {
		t.Fatalf("load after a power cycle: %v", err)
	}
	defer func() { _ = k2.Close() }()
	verifies(t, k2)
	if !k2.Public().(*ecdsa.PublicKey).Equal(k.Public()) {
		t.Error("another key after the power cycle")
	}
}

// notThisTPM: a blob from TPM a (the card moved to another board) fails
// in b with ErrNotThisTPM, whether the file names its parent or not (then
// the TPM's own integrity check refuses it); no TPM at the path is
// ErrNoTPM.
func notThisTPM(t *testing.T, a, b *swtpm.TPM) {
	t.Helper()
	blob, err := open(t, a).Create()
	if err != nil {
		t.Fatal(err)
	}
	other := open(t, b)
	if _, err := other.Load(blob); !errors.Is(err, tpmkey.ErrNotThisTPM) {
		t.Errorf("another TPM's blob: %v, want ErrNotThisTPM", err)
	}
	noParent := *blob
	noParent.Parent = ""
	if _, err := other.Load(&noParent); !errors.Is(err, tpmkey.ErrNotThisTPM) {
		t.Errorf("another TPM's blob without its parent's name: %v, want ErrNotThisTPM", err)
	}
	if _, err := tpmkey.OpenKey(blob.Marshal(), "unix:"+t.TempDir()+"/none.sock"); !errors.Is(err, tpmkey.ErrNoTPM) || errors.Is(err, tpmkey.ErrNotThisTPM) {
		t.Errorf("no TPM: %v, want ErrNoTPM", err)
	}
	if _, err := tpmkey.ParseBlob([]byte(`{"format":"other"}`)); !errors.Is(err, tpmkey.ErrBadKeyFile) {
		t.Errorf("a foreign file: %v, want ErrBadKeyFile", err)
	}
}

// tlsHandshake is a full TLS 1.3 handshake with mutual authentication:
// the client's key is k, the server (crypto/tls) verifies its
// CertificateVerify.
func tlsHandshake(t *testing.T, k crypto.Signer) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(pub crypto.PublicKey, eku x509.ExtKeyUsage, serial int64) []byte {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"}, DNSNames: []string{"localhost"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{issue(srvKey.Public(), x509.ExtKeyUsageServerAuth, 2)}, PrivateKey: srvKey}}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer func() { _ = c.Close() }()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			got <- err
			return
		}
		if len(tc.ConnectionState().PeerCertificates) == 0 {
			got <- errors.New("no client certificate")
			return
		}
		_, err = tc.Write([]byte("ok"))
		got <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "localhost",
		Certificates: []tls.Certificate{{Certificate: [][]byte{issue(k.Public(), x509.ExtKeyUsageClientAuth, 3)}, PrivateKey: k}}})
	if err != nil {
		t.Fatalf("handshake with the TPM key: %v", err)
	}
	defer func() { _ = c.Close() }()
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q: %v", buf, err)
	}
	if err := <-got; err != nil {
		t.Fatalf("server: %v", err)
	}
}

// The device's half of the attestation against the proxy's verifier
// (proxy/attest): the EK certificate chains to the TPM's manufacturer,
// the credential made for the AK's name opens in this TPM only, and the
// AK's certification of the device key over the qualifying data verifies
// for the CSR's key, once. (Two TPMs: the moved card's refusals are
// checked here too.)
func TestAttestation(t *testing.T) {
	sw, sw2 := swtpm.Start(t), swtpm.Start(t)
	notThisTPM(t, sw, sw2)
	v, err := attest.Load(sw.ManufacturerChain, attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const hwid = "10000000abcdef01"
	board := tpmkeytest.Open(t, sw)
	k, csr, _ := board.NewKey()
	// answer is the board's answer to a fresh challenge.
	answer := func() (*enrollapi.ChallengeResponse, *enrollapi.Attestation) {
		t.Helper()
		ch, err := v.Challenge(board.Request("rpi4", hwid), hwid)
		if err != nil {
			t.Fatalf("challenge: %v", err)
		}
		return ch, board.Answer(ch, k, csr, hwid)
	}

	// This certification with the CSR of another key (a software one).
	soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, att := answer()
	if _, err := v.Verify(att, hwid, certRequest(t, soft), hwid); !errors.Is(err, attest.ErrNotCertified) {
		t.Errorf("the attestation for another key's CSR: %v, want ErrNotCertified", err)
	}
	ch, att := answer()
	res, err := v.Verify(att, hwid, csr, hwid)
	if err != nil {
		t.Fatalf("attestation: %v", err)
	}
	if res.EKHash != sw.EKHash() {
		t.Errorf("EK hash %s, want %s", res.EKHash, sw.EKHash())
	}
	if _, err := v.Verify(att, hwid, csr, hwid); !errors.Is(err, attest.ErrReplayed) {
		t.Errorf("a replayed attestation: %v, want ErrReplayed", err)
	}

	// Another TPM cannot open this TPM's credential; its EK certificate
	// is from a manufacturer the verifier does not trust.
	other := tpmkeytest.Open(t, sw2)
	if _, err := other.AK.ActivateCredential(ch.Credential, ch.Secret); err == nil {
		t.Error("another TPM opened this TPM's credential")
	}
	otherKey, otherCSR, _ := other.NewKey()
	if _, err := other.AK.Answer(ch, otherKey, otherCSR.Raw, hwid); !errors.Is(err, tpmkey.ErrCredential) {
		t.Errorf("another TPM's answer: %v, want ErrCredential", err)
	}
	if _, err := v.Challenge(other.Request("rpi4", hwid), hwid); !errors.Is(err, attest.ErrUntrustedEK) {
		t.Errorf("an EK certificate of an untrusted manufacturer: %v, want ErrUntrustedEK", err)
	}
}

// certRequest is a CSR naming nothing, signed by key.
func certRequest(t testing.TB, key crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// BenchmarkAttestation is what the attestation adds to an enrollment, in
// process, with swtpm: on the device (EK certificate read, AK made,
// credential activated, device key certified; device-ms/attestation) and
// at the proxy's verifier (challenge and verify); ns/op is both.
func BenchmarkAttestation(b *testing.B) {
	sw := swtpm.Start(b)
	tp, err := tpmkey.Open(sw.Path())
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tp.Close() }()
	_, k := newKey(b, tp)
	v, err := attest.Load(sw.ManufacturerChain, attest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	csr := certRequest(b, k)
	const hwid = "10000000abcdef01"
	var device time.Duration
	for b.Loop() {
		start := time.Now()
		ek, err := tp.EKCertificate()
		if err != nil {
			b.Fatal(err)
		}
		ak, err := tp.NewAK()
		if err != nil {
			b.Fatal(err)
		}
		device += time.Since(start)
		ch, err := v.Challenge(enrollapi.ChallengeRequest{HardwareID: hwid, EKCert: ek, AKPublic: ak.Public()}, hwid)
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		att, err := ak.Answer(ch, k, csr.Raw, hwid)
		if err != nil {
			b.Fatal(err)
		}
		_ = ak.Close()
		device += time.Since(start)
		if _, err := v.Verify(att, hwid, csr, hwid); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(device.Milliseconds())/float64(b.N), "device-ms/attestation")
}
