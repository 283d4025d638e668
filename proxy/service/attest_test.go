package service_test

import (
	"crypto/ecdsa"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/deviceclient/tpmkey/tpmkeytest"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/auditlog"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// A real proxy with manufacturer roots and a batch that requires
// attestation: a board with its key in its TPM enrolls (its EK is the one
// the manifest lists, and the record names it); a board of the batch with
// a software key, a replayed attestation and a TPM other than the one the
// manifest lists are refused with rule attestation, in the answer and in
// the factory record.
func TestAttestedEnrollment(t *testing.T) {
	tpm := swtpm.Start(t)
	ek := tpm.EKHash()
	dir := t.TempDir()
	manifest := filepath.Join(dir, "tpm.csv")
	lines := fmt.Sprintf("board,hardwareId,ekSha256\nrpi4,10000000000000a1,%s\nrpi4,10000000000000a2,\nrpi4,10000000000000a3,%s\n", ek, strings.Repeat("0", 64))
	if err := os.WriteFile(manifest, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	core := coretest.Start(t, "")
	p := proxytest.StartWith(t, core, fmt.Sprintf("attestation: {roots: %q}", tpm.ManufacturerChain),
		local+fmt.Sprintf("batches:\n  - {name: tpm, manifest: %q, attestation: required}\n", manifest))
	roots, err := pki.LoadTrustBundle(core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{core: core, proxy: p, url: p.URL, record: p.Record, roots: roots}

	// The board: its TPM driven by the device client's own package.
	board := tpmkeytest.Open(t, tpm)
	key, csr, csrPEM := board.NewKey()
	attested := func(hw string) enrollapi.EnrollRequest {
		t.Helper()
		var ch enrollapi.ChallengeResponse
		if code, ae := e.post(t, enrollapi.RouteEnrollChallenge.Path, board.Request("rpi4", hw), &ch); code != http.StatusOK {
			t.Fatalf("challenge for %s: %d %+v", hw, code, ae)
		}
		return enrollapi.EnrollRequest{Board: "rpi4", HardwareID: hw, CSR: csrPEM, Attestation: board.Answer(&ch, key, csr, hw)}
	}
	good := attested("10000000000000a1")
	code, r, ae := e.enroll(t, good)
	if code != http.StatusOK {
		t.Fatalf("attested enrollment: %d %+v", code, ae)
	}
	chain, err := pki.ParseCertificates([]byte(r.Certificate))
	if err != nil || !csr.PublicKey.(*ecdsa.PublicKey).Equal(chain[0].PublicKey) {
		t.Fatalf("the certificate is not for the TPM key: %v", err)
	}
	// The certificate says the key is in that TPM (the TPM key policy,
	// from step-ca's template), and core recorded the same.
	if ka, err := pki.KeyAttestationOf(chain[0]); err != nil || !ka.TPM || ka.EKSHA256 != ek {
		t.Errorf("the certificate's key attestation: %+v %v, want TPM with EK %s", ka, err, ek)
	}
	// OpenSSL shows it as it is (docs/operations.md).
	openssl := testenv.Tool(t, "openssl", "install Debian's openssl")
	cmd := exec.Command(openssl, "x509", "-noout", "-text")
	cmd.Stdin = strings.NewReader(r.Certificate)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Policy: "+pki.TPMKeyPolicyOID) ||
		!strings.Contains(string(out), pki.TPMNoticePrefix+ek) {
		t.Errorf("openssl x509 -text: %v\n%s", err, out)
	}
	full, err := core.Client(t, core.Admin(t)).Device(ctx, r.Serial)
	if err != nil || len(full.Issued) != 1 || full.Issued[0].EKSHA256 != ek {
		t.Errorf("core's record of the issued certificate: %+v %v, want EK %s", full.Issued, err, ek)
	}
	soft := req("rpi4", "10000000000000a2", newDevice(t))
	for _, tc := range []struct {
		name string
		req  enrollapi.EnrollRequest
		says string
	}{
		{"software key in a batch that requires attestation", soft, "requires a TPM-attested key"},
		{"replayed attestation", good, "already used"},
		{"another TPM than the manifest lists", attested("10000000000000a3"), "not the one the manifest lists"},
	} {
		code, _, ae := e.enroll(t, tc.req)
		if code != http.StatusForbidden || ae.Code != enrollapi.RuleAttestation.Code() || !strings.Contains(ae.Message, tc.says) {
			t.Errorf("%s: %d %+v, want refused_attestation saying %q", tc.name, code, ae, tc.says)
		}
	}
	// A challenge for a board in no manifest is refused by the manifest
	// rule, recorded like an enrollment's refusal.
	if code, ae := e.post(t, enrollapi.RouteEnrollChallenge.Path, board.Request("rpi4", "10000000000000ff"), new(enrollapi.ChallengeResponse)); code != http.StatusForbidden || ae.Code != enrollapi.RuleManifest.Code() {
		t.Errorf("a challenge outside the manifest: %d %+v", code, ae)
	}
	var got []string
	if err := auditlog.Read(e.record, func(rec auditlog.Record) error {
		got = append(got, rec.Result+":"+rec.Rule+":"+rec.EK)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("[enrolled::%s refused:attestation: refused:attestation: refused:attestation: refused:manifest:]", ek); fmt.Sprint(got) != want {
		t.Errorf("factory record %v, want %s", got, want)
	}
}
