package attest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/fleetprov/prov/proxy/attest/attesttest"
)

// The TPM structures a board sends are parsed without panicking, whatever
// they are; a refusal is always an *Error.
func FuzzParse(f *testing.F) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	ak := attesttest.AKTemplate
	ak.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, 32))}, //nolint:staticcheck // the point's coordinates, as a TPM writes them
		Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, 32))}, //nolint:staticcheck // idem
	})
	key := attesttest.KeyTemplate
	key.Unique = ak.Unique
	f.Add(tpm2.Marshal(tpm2.New2B(ak)))
	f.Add(tpm2.Marshal(tpm2.New2B(key)))
	f.Add(tpm2.Marshal(tpm2.New2B(tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestCertify,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{})})))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(err error) {
			if _, ok := err.(*Error); err != nil && !ok { //nolint:errorlint // the type itself, unwrapped, is the contract
				t.Fatalf("not an *Error: %v", err)
			}
		}
		_, _, err := parseAK(b)
		check(err)
		_, _, err = parseDeviceKey(b)
		check(err)
		_, err = checkCertify(&ak, b, b)
		check(err)
	})
}
