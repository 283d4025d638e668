package attest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/deviceclient/tpmkey/tpmkeytest"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/proxy/attest"
	"github.com/fleetprov/prov/proxy/attest/attesttest"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
)

const hw = "10000000abcdef12"

func verifier(t testing.TB, roots string, o attest.Options) *attest.Verifier {
	t.Helper()
	v, err := attest.Load(roots, o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func challenge(t testing.TB, v *attest.Verifier, req enrollapi.ChallengeRequest) *enrollapi.ChallengeResponse {
	t.Helper()
	ch, err := v.Challenge(req, hw)
	if err != nil {
		t.Fatalf("challenge: %v", err)
	}
	return ch
}

// Two TPMs, each from its own manufacturer, driven by the device client's
// TPM package: a good attestation of A's key passes and names A's EK;
// each way it can be wrong is refused with its own error. What a real
// board cannot send (an exportable key the TPM certified, a forged
// certification) is made with go-tpm directly (attesttest) or in software.
func TestAttestation(t *testing.T) {
	tpmA, tpmB := swtpm.Start(t), swtpm.Start(t)
	now := time.Now()
	clock := func() time.Time { return now }
	v := verifier(t, tpmA.ManufacturerChain, attest.Options{Now: clock})
	// First, while no other client has A's socket (swtpm serves one).
	t.Run("exportable key", func(t *testing.T) {
		a := attesttest.Open(t, tpmA)
		tmpl := attesttest.KeyTemplate
		tmpl.ObjectAttributes.FixedTPM, tmpl.ObjectAttributes.FixedParent = false, false
		loose := a.NewKey(tmpl)
		_, csr := softwareCSR(t)
		att := a.Answer(challenge(t, v, a.ChallengeRequest("rpi4", hw)), loose, csr, hw)
		if _, err := v.Verify(att, hw, csr, hw); !errors.Is(err, attest.ErrExportable) {
			t.Errorf("an exportable key the TPM certified: %v", err)
		}
	})
	a, b := tpmkeytest.Open(t, tpmA), tpmkeytest.Open(t, tpmB)
	key, csr, _ := a.NewKey()

	// good, then replayed.
	ch := challenge(t, v, a.Request("rpi4", hw))
	good := a.Answer(ch, key, csr, hw)
	res, err := v.Verify(good, hw, csr, hw)
	if err != nil {
		t.Fatalf("a good attestation: %v", err)
	}
	if res.EKHash != tpmA.EKHash() || res.EKHash == tpmB.EKHash() {
		t.Errorf("EK hash %s, want A's %s", res.EKHash, tpmA.EKHash())
	}
	refused := func(name string, want error, att *enrollapi.Attestation) {
		t.Helper()
		_, err := v.Verify(att, hw, csr, hw)
		var ae *attest.Error
		if !errors.Is(err, want) || !errors.As(err, &ae) {
			t.Errorf("%s: got %v, want %v", name, err, want)
		}
	}
	refused("replayed", attest.ErrReplayed, good)

	t.Run("untrusted EK", func(t *testing.T) {
		// B's manufacturer only: A's EK does not chain to it.
		vb := verifier(t, tpmB.ManufacturerChain, attest.Options{})
		_, err := vb.Challenge(a.Request("rpi4", hw), hw)
		if !errors.Is(err, attest.ErrUntrustedEK) {
			t.Errorf("A's EK under B's manufacturer: %v", err)
		}
		if _, err := vb.Challenge(b.Request("rpi4", hw), hw); err != nil {
			t.Errorf("B's EK under B's manufacturer: %v", err)
		}
	})
	t.Run("AK not activated", func(t *testing.T) {
		// A's EK with B's AK: neither TPM can open the credential, the
		// board answers with what it has.
		req := a.Request("rpi4", hw)
		req.AKPublic = b.AK.Public()
		ch := challenge(t, v, req)
		if _, err := b.AK.ActivateCredential(ch.Credential, ch.Secret); err == nil {
			t.Fatal("B opened a credential for A's EK")
		}
		if _, err := a.AK.ActivateCredential(ch.Credential, ch.Secret); err == nil {
			t.Fatal("A opened a credential for B's AK")
		}
		att := a.Answer(challenge(t, v, a.Request("rpi4", hw)), key, csr, hw)
		att.Challenge = ch.ID
		refused("wrong secret", attest.ErrNotActivated, att)
	})
	t.Run("AK not a restricted signing key", func(t *testing.T) {
		req := a.Request("rpi4", hw)
		req.AKPublic = key.PublicArea()
		if _, err := v.Challenge(req, hw); !errors.Is(err, attest.ErrBadAK) {
			t.Errorf("the device key as AK: %v", err)
		}
	})
	other, otherCSR, _ := b.NewKey()
	t.Run("key certified by another TPM's AK", func(t *testing.T) {
		ch := challenge(t, v, a.Request("rpi4", hw))
		att := a.Answer(ch, key, otherCSR, hw) // A activates
		info, sig, err := b.AK.Certify(other, enrollapi.QualifyingData(ch.Nonce, otherCSR.Raw, hw))
		if err != nil {
			t.Fatal(err)
		}
		att.KeyPublic, att.CertifyInfo, att.Signature = other.PublicArea(), info, sig
		if _, err := v.Verify(att, hw, otherCSR, hw); !errors.Is(err, attest.ErrNotCertified) {
			t.Errorf("B's key certified by B's AK: %v", err)
		}
	})
	t.Run("another key than the certified one", func(t *testing.T) {
		// A's AK certified A's key; the board names another (B's).
		att := a.Answer(challenge(t, v, a.Request("rpi4", hw)), key, otherCSR, hw)
		att.KeyPublic = other.PublicArea()
		if _, err := v.Verify(att, hw, otherCSR, hw); !errors.Is(err, attest.ErrNotCertified) {
			t.Errorf("keyPublic not the certified key: %v", err)
		}
	})
	t.Run("software key, forged certification", func(t *testing.T) {
		sw, csr := softwareCSR(t)
		ch := challenge(t, v, a.Request("rpi4", hw))
		att := a.Answer(ch, key, csr, hw)
		att.KeyPublic, att.CertifyInfo, att.Signature = forge(t, sw, enrollapi.QualifyingData(ch.Nonce, csr.Raw, hw))
		if _, err := v.Verify(att, hw, csr, hw); !errors.Is(err, attest.ErrNotCertified) {
			t.Errorf("a forged certification: %v", err)
		}
	})
	t.Run("CSR key differs", func(t *testing.T) {
		_, swCSR := softwareCSR(t)
		att := a.Answer(challenge(t, v, a.Request("rpi4", hw)), key, swCSR, hw)
		if _, err := v.Verify(att, hw, swCSR, hw); !errors.Is(err, attest.ErrKeyMismatch) {
			t.Errorf("the TPM key certified, a software key's CSR: %v", err)
		}
	})
	t.Run("certified for another enrollment", func(t *testing.T) {
		att := a.Answer(challenge(t, v, a.Request("rpi4", hw)), key, csr, "10000000ffffffff")
		if _, err := v.Verify(att, hw, csr, hw); !errors.Is(err, attest.ErrNotCertified) {
			t.Errorf("qualifying data for another hardware ID: %v", err)
		}
	})
	t.Run("unknown, another board's, expired", func(t *testing.T) {
		att := a.Answer(challenge(t, v, a.Request("rpi4", hw)), key, csr, hw)
		if _, err := v.Verify(att, "10000000ffffffff", csr, hw); !errors.Is(err, attest.ErrUnknownChallenge) {
			t.Errorf("another board's challenge: %v", err)
		}
		att.Challenge = "00"
		refused("unknown", attest.ErrUnknownChallenge, att)
		att = a.Answer(challenge(t, v, a.Request("rpi4", hw)), key, csr, hw)
		now = now.Add(attest.DefaultTTL)
		refused("expired", attest.ErrExpiredChallenge, att)
	})
	t.Run("bounded", func(t *testing.T) {
		one := verifier(t, tpmA.ManufacturerChain, attest.Options{Max: 1})
		challenge(t, one, a.Request("rpi4", hw))
		if _, err := one.Challenge(a.Request("rpi4", hw), hw); !errors.Is(err, attest.ErrBusy) {
			t.Errorf("a second challenge past the bound: %v", err)
		}
	})
}

// softwareCSR is a software key and its CSR.
func softwareCSR(t *testing.T) (*ecdsa.PrivateKey, *x509.CertificateRequest) {
	t.Helper()
	sw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := attesttest.CSR(t, sw)
	return sw, csr
}

// forge is a software key's public area claiming to be fixed to a TPM,
// with a TPM2_Certify structure for it signed by the key itself.
func forge(t *testing.T, sw *ecdsa.PrivateKey, qualifying []byte) (pub, info, sig []byte) {
	t.Helper()
	tmpl := attesttest.KeyTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: sw.X.FillBytes(make([]byte, 32))}, //nolint:staticcheck // the point's coordinates, as the TPM writes them
		Y: tpm2.TPM2BECCParameter{Buffer: sw.Y.FillBytes(make([]byte, 32))}, //nolint:staticcheck // idem
	})
	name, err := tpm2.ObjectName(&tmpl)
	if err != nil {
		t.Fatal(err)
	}
	attest := tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestCertify, ExtraData: tpm2.TPM2BData{Buffer: qualifying},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{Name: *name, QualifiedName: *name})}
	inner := tpm2.Marshal(attest)
	digest := sha256.Sum256(inner)
	r, s, err := ecdsa.Sign(rand.Reader, sw, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	signature := tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()}})}
	return tpm2.Marshal(tpm2.New2B(tmpl)), tpm2.Marshal(tpm2.New2B(attest)), tpm2.Marshal(signature)
}

// A roots file with no self-signed certificate is refused.
func TestLoadNeedsARoot(t *testing.T) {
	tpm := swtpm.Start(t)
	issuer, err := os.ReadFile(tpm.ManufacturerChain)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(tpm.ManufacturerRoots)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.New(issuer[:len(issuer)-len(root)], attest.Options{}); err == nil {
		t.Error("an intermediate alone was taken as roots")
	}
	if _, err := attest.New(root, attest.Options{}); err != nil {
		t.Errorf("the root: %v", err)
	}
}

// BenchmarkProxyCost is the proxy's own work per attested enrollment:
// Challenge (EK chain, credential) and Verify (signature, checks); the
// board's TPM work runs with the timer stopped.
func BenchmarkProxyCost(b *testing.B) {
	board, v, key, csr := benchBoard(b)
	for b.Loop() {
		ch := challenge(b, v, board.Request("rpi4", hw))
		b.StopTimer()
		att := board.Answer(ch, key, csr, hw)
		b.StartTimer()
		if _, err := v.Verify(att, hw, csr, hw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRoundTrip adds the board's TPM work with swtpm (EK made,
// credential activated, key certified; the EK certificate read, the AK and
// the key made once): what attestation adds per enrollment, less the
// network and the device's one-time setup.
func BenchmarkRoundTrip(b *testing.B) {
	board, v, key, csr := benchBoard(b)
	for b.Loop() {
		att := board.Answer(challenge(b, v, board.Request("rpi4", hw)), key, csr, hw)
		if _, err := v.Verify(att, hw, csr, hw); err != nil {
			b.Fatal(err)
		}
	}
}

// benchBoard is a TPM with its AK and a device key, and a verifier that
// trusts its manufacturer.
func benchBoard(b *testing.B) (*tpmkeytest.Board, *attest.Verifier, *tpmkey.Key, *x509.CertificateRequest) {
	b.Helper()
	tpm := swtpm.Start(b)
	board := tpmkeytest.Open(b, tpm)
	v := verifier(b, tpm.ManufacturerChain, attest.Options{})
	key, csr, _ := board.NewKey()
	return board, v, key, csr
}
