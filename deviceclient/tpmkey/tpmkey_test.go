package tpmkey_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
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
func newKey(t *testing.T, tp *tpmkey.TPM) (*tpmkey.Blob, *tpmkey.Key) {
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

// A key made in the TPM signs (crypto/ecdsa verifies its signatures), is
// fixedTPM|fixedParent|sensitiveDataOrigin and not a decryption or
// restricted key, its blob holds no private key in the clear, and it loads
// again after a power cycle, both anew and in the signer that was loaded
// before.
func TestKeyInTPM(t *testing.T) {
	sw := swtpm.Start(t)
	tp := open(t, sw)
	blob, k := newKey(t, tp)
	verifies(t, k)
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

// A blob from another TPM (the card moved to another board) fails with
// ErrNotThisTPM, whether the file names its parent or not (then the TPM's
// own integrity check refuses it); no TPM at the path is ErrNoTPM.
func TestNotThisTPM(t *testing.T) {
	a, b := swtpm.Start(t), swtpm.Start(t)
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

// A full TLS 1.3 handshake with mutual authentication: the client's key is
// the TPM's, the server (crypto/tls) verifies its CertificateVerify.
func TestTLSWithTPMKey(t *testing.T) {
	tp := open(t, swtpm.Start(t))
	_, k := newKey(t, tp)
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

// The device's half of the attestation against a stand-in for the
// proxy's: the EK certificate chains to the TPM's manufacturer, a
// credential made for the AK's name with the EK's public key opens only in
// this TPM, and the AK's certification of the device key names the key,
// carries the qualifying data and verifies with the AK's public key.
func TestAttestation(t *testing.T) {
	sw := swtpm.Start(t)
	tp := open(t, sw)
	_, k := newKey(t, tp)

	start := time.Now()
	ekDER, err := tp.EKCertificate()
	if err != nil {
		t.Fatal(err)
	}
	ekRead := time.Since(start)
	ak, err := tp.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ak.Close() }()
	akMade := time.Since(start)

	// The proxy's half (stand-in): check the EK certificate, make the
	// credential.
	ekCert, err := x509.ParseCertificate(ekDER)
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AppendCertsFromPEM(readFile(t, sw.ManufacturerRoots))
	inter.AppendCertsFromPEM(readFile(t, sw.ManufacturerChain))
	ekCert.UnhandledCriticalExtensions = nil // the TPM's SAN is a directory name Go does not handle
	if _, err := ekCert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("EK certificate: %v", err)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](ak.Public())
	if err != nil {
		t.Fatal(err)
	}
	akArea, err := akPub.Contents()
	if err != nil {
		t.Fatal(err)
	}
	if a := akArea.ObjectAttributes; !a.Restricted || !a.SignEncrypt || !a.FixedTPM || !a.FixedParent {
		t.Errorf("AK attributes %+v", a)
	}
	akName, err := tpm2.ObjectName(akArea)
	if err != nil {
		t.Fatal(err)
	}
	ekTmpl := tpm2.RSAEKTemplate
	ekTmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: ekCert.PublicKey.(*rsa.PublicKey).N.Bytes()})
	ekKEM, err := tpm2.ImportEncapsulationKey(&ekTmpl)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("0123456789abcdef0123456789abcdef")
	cred, secret, err := tpm2.CreateCredential(rand.Reader, ekKEM, akName.Buffer, want)
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("the proxy's nonce for this enrollment")

	// The device again.
	mid := time.Now()
	activated, err := ak.ActivateCredential(cred, secret)
	if err != nil {
		t.Fatal(err)
	}
	qd := enrollapi.QualifyingData(nonce, []byte("csr"), "rpi4:10000000abcdef01")
	attest, sig, err := ak.Certify(k, qd)
	if err != nil {
		t.Fatal(err)
	}
	total := ekRead + time.Since(mid) + (akMade - ekRead)
	t.Logf("attestation on the device with swtpm: EK certificate read %v, AK made %v, activate and certify %v; total %v",
		ekRead, akMade-ekRead, time.Since(mid), total)

	// The proxy's checks.
	if !bytes.Equal(activated, want) {
		t.Fatal("the activated secret is not the credential's")
	}
	a2b, err := tpm2.Unmarshal[tpm2.TPM2BAttest](attest)
	if err != nil {
		t.Fatalf("TPM2B_ATTEST: %v", err)
	}
	body, err := a2b.Contents()
	if err != nil {
		t.Fatal(err)
	}
	if body.Type != tpm2.TPMSTAttestCertify || !bytes.Equal(body.ExtraData.Buffer, qd) {
		t.Errorf("attest type %v extra data %x, want certify over %x", body.Type, body.ExtraData.Buffer, qd)
	}
	ci, err := body.Attested.Certify()
	if err != nil {
		t.Fatal(err)
	}
	keyPub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](k.PublicArea())
	if err != nil {
		t.Fatal(err)
	}
	keyArea, _ := keyPub.Contents()
	keyName, _ := tpm2.ObjectName(keyArea)
	if !bytes.Equal(ci.Name.Buffer, keyName.Buffer) {
		t.Error("the certification names another key")
	}
	tsig, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		t.Fatal(err)
	}
	es, err := tsig.Signature.ECDSA()
	if err != nil {
		t.Fatal(err)
	}
	akKey, err := tpm2.Pub(*akArea)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(a2b.Bytes())
	if !ecdsa.Verify(akKey.(*ecdsa.PublicKey), digest[:], new(big.Int).SetBytes(es.SignatureR.Buffer), new(big.Int).SetBytes(es.SignatureS.Buffer)) {
		t.Error("the AK's signature over the certification does not verify")
	}

	// A credential for the AK of another TPM does not open here.
	other := open(t, swtpm.Start(t))
	ak2, err := other.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ak2.Close() }()
	if _, err := ak2.ActivateCredential(cred, secret); err == nil {
		t.Error("another TPM opened this TPM's credential")
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
