package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/deviceclient/enroll"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/contract/enrollapi"
	"github.com/fleetprov/prov/proxy/proxytest"
)

// A board with its key in a TPM (swtpm) enrolls through a real proxy (its
// attestation verifier trusting the TPM's manufacturer; the board's batch
// requires attestation and its manifest lists the board's endorsement
// key), core and step-ca. The certificate says the key is in that TPM, and
// core's admin view names the same endorsement key; the state directory
// holds the TPM's blob and no private key. With the TPM key the daemon
// renews at step-ca (same key), follows MQTT and updates from core (mTLS);
// after a power cycle of the TPM the key still loads.
//
// Then the card moves to a board with another TPM (same hardware ID): the
// device refuses with ErrNotThisTPM and `prov-device update` exits 7
// saying what to do. Enrolled again there (`enroll --key tpm`, an empty
// state directory: a new key in the new TPM), the proxy whose manifest
// still lists the old TPM refuses by the attestation rule; with the
// manifest naming the new TPM, the re-enrollment policy decides: deny
// refuses (rule reenrollment), allow enrolls and revokes the old
// certificate.
func TestTPMKey(t *testing.T) {
	sw, other := swtpm.Start(t), swtpm.Start(t)
	ek, otherEK := sw.EKHash(), other.EKHash()
	const raw = "1813BBBK0201"
	id, err := hwid.Parse("bbb", raw)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The verifier trusts both TPMs' manufacturers: the moved card's
	// refusals are the manifest's and the policy's, not the chain's.
	roots := filepath.Join(dir, "manufacturers.pem")
	manifest := func(name, ek string) string {
		path := filepath.Join(dir, name+".csv")
		write(t, path, fmt.Sprintf("board,hardwareId,ekSha256\nbbb,%s,%s\n", id.Canonical, ek))
		return fmt.Sprintf("batches:\n  - {name: %s, manifest: %q, attestation: required}\n", name, path)
	}
	write(t, roots, string(read(t, sw.ManufacturerChain))+string(read(t, other.ManufacturerChain)))
	core := coretest.Start(t, "")
	top := fmt.Sprintf("certificateLifetime: 5m\nattestation: {roots: %q}\n", roots)
	f := &fleet{core: core, proxy: proxytest.StartWith(t, core, top, local+manifest("line1", ek))}
	rootPEM := read(t, core.RootCert())

	st, err := state.Open(filepath.Join(dir, "card"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	dev, _, err := enroll.Enroll(ctx, st, enroll.Options{ProxyURL: f.proxy.URL, RootPEM: rootPEM, ID: id, Key: enroll.KeyTPM, TPM: sw.Path(),
		Install: install.Options{Rules: imagespec.DefaultRules()}})
	if err != nil {
		t.Fatalf("enroll with the key in the TPM: %v", err)
	}
	old, err := st.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	if ka, err := pki.KeyAttestationOf(old); err != nil || !ka.TPM || ka.EKSHA256 != ek {
		t.Errorf("the certificate's key attestation: %+v %v, want TPM with EK %s", ka, err, ek)
	}
	admin := core.Client(t, core.Admin(t))
	if d, err := admin.Device(ctx, dev.Serial); err != nil || len(d.Issued) != 1 || d.Issued[0].EKSHA256 != ek {
		t.Errorf("core's record of the issued certificate: %+v %v, want EK %s", d, err, ek)
	}
	// The state directory: the TPM's blob, no private key.
	if _, err := os.Stat(st.File(state.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: %v, want none", state.KeyFile, err)
	}
	if _, err := tpmkey.ParseBlob(read(t, st.File(state.TPMKeyFile))); err != nil {
		t.Fatal(err)
	}
	_ = filepath.WalkDir(st.Path, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(path); bytes.Contains(b, []byte("PRIVATE KEY")) {
				t.Errorf("%s holds a private key", path)
			}
		}
		return nil
	})

	// The daemon with the TPM key: renewal at step-ca, MQTT, core.
	a := newAgent(t, st, agent.Options{RenewAt: 0.001, PollInterval: time.Hour})
	t.Cleanup(func() { _ = a.Close() })
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	err = testenv.WaitFor(30*time.Second, func() error {
		leaf, err := st.Leaf()
		if err != nil {
			return err
		}
		if leaf.SerialNumber.Cmp(old.SerialNumber) == 0 {
			return fmt.Errorf("not renewed; status %+v", st.Status())
		}
		if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, old.RawSubjectPublicKeyInfo) {
			return testenv.Final(errors.New("renewed for another key"))
		}
		return nil
	})
	if err == nil {
		gen := f.change(t, dev.Serial, "tpm")
		err = testenv.WaitFor(30*time.Second, installed(t, st, gen))
	}
	stop()
	if rerr := <-done; rerr != nil {
		t.Errorf("run: %v", rerr)
	}
	if err != nil {
		t.Fatal(err)
	}

	// A power cycle: the key loads again from the blob.
	_ = a.Close()
	sw.Restart()
	b := newAgent(t, st, agent.Options{})
	t.Cleanup(func() { _ = b.Close() })
	gen := f.change(t, dev.Serial, "after-power-cycle")
	if res, err := b.Update(ctx); err != nil || res == nil || res.Generation != gen {
		t.Fatalf("update after a power cycle: %+v %v", res, err)
	}
	_ = b.Close()

	// The card in a board with another TPM.
	if _, err := agent.New(st, agent.Options{TPM: other.Path()}); !errors.Is(err, tpmkey.ErrNotThisTPM) {
		t.Fatalf("another board's TPM: %v, want ErrNotThisTPM", err)
	}
	var out, errb bytes.Buffer
	code := cli.Main(ctx, []string{"update", "--state", st.Path, "--board", "bbb", "--hwid", raw, "--tpm", other.Path()}, &out, &errb)
	if code != cli.ExitNotThisTPM || !strings.Contains(errb.String(), "put the card back") {
		t.Errorf("prov-device update in another board: exit %d\n%s", code, errb.String())
	}

	// Enrolled again in that board: a new key in the new TPM, the same
	// hardware ID.
	reenroll := func(proxyURL string) (int, string) {
		t.Helper()
		var out, errb bytes.Buffer
		code := cli.Main(ctx, []string{"enroll", "--proxy", proxyURL, "--root", core.RootCert(), "--state", t.TempDir(),
			"--board", "bbb", "--hwid", raw, "--key", "tpm", "--tpm", other.Path()}, &out, &errb)
		return code, out.String() + errb.String()
	}
	if code, out := reenroll(f.proxy.URL); code != cli.ExitError || !strings.Contains(out, string(enrollapi.RuleAttestation.Code())) ||
		!strings.Contains(out, "not the one the manifest lists") {
		t.Errorf("another TPM than line1's manifest lists: exit %d, want %d (refused_attestation)\n%s", code, cli.ExitError, out)
	}
	deny := proxytest.StartWith(t, core, top, local+manifest("line2", otherEK))
	if code, out := reenroll(deny.URL); code != cli.ExitError || !strings.Contains(out, string(enrollapi.RuleReenrollment.Code())) {
		t.Errorf("re-enrollment under deny: exit %d, want %d (refused_reenrollment)\n%s", code, cli.ExitError, out)
	}
	allow := proxytest.StartWith(t, core, top, local+manifest("line3", otherEK)+"reenrollment: allow\n")
	if code, out := reenroll(allow.URL); code != cli.ExitOK {
		t.Fatalf("re-enrollment under allow: exit %d\n%s", code, out)
	}
	// The certificate the proxy issued at the first enrollment is
	// revoked at step-ca, and core accepts the old key no more: the old
	// card, back in its own board with its renewed certificate, is
	// refused (it had kept working at core before core marked replaced
	// keys).
	if ok, serials := core.Revoked(t, old); !ok {
		t.Errorf("the first certificate %s is not revoked (CRL: %v)", old.SerialNumber, serials)
	}
	back := newAgent(t, st, agent.Options{})
	t.Cleanup(func() { _ = back.Close() })
	if res, err := back.Update(ctx); err == nil || !strings.Contains(err.Error(), string(coreapi.CodeKeyNotEnrolled)) {
		t.Errorf("the old card after the re-enrollment: %+v %v, want %s", res, err, coreapi.CodeKeyNotEnrolled)
	}
	if d, err := admin.Device(ctx, dev.Serial); err != nil || len(d.Issued) == 0 || d.Issued[len(d.Issued)-1].EKSHA256 != otherEK {
		t.Errorf("core's record after the re-enrollment: %+v %v, want the new TPM's EK %s last", d.Issued, err, otherEK)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkEnrollTPM is what the attestation adds to one enrollment end to
// end: enroll.Enroll as prov-device enroll runs it (key made, CSR, TLS to
// the proxy, the proxy's registration at core, step-ca's signature, core's
// first image, installed) through a real proxy, core and step-ca, with a
// software key and with the key in a TPM (swtpm: key made in the TPM, EK
// certificate read, AK made, the challenge's round trip, credential
// activated, key certified, the proxy's verification). Each iteration is a
// new board (its own hardware ID and state directory).
func BenchmarkEnrollTPM(b *testing.B) {
	sw := swtpm.Start(b)
	core := coretest.Start(b, "")
	proxy := proxytest.StartWith(b, core, fmt.Sprintf("attestation: {roots: %q}\n", sw.ManufacturerChain),
		local+"rate: 100000\nburst: 100000\n")
	rootPEM, err := os.ReadFile(core.RootCert())
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, key := range []enroll.KeyKind{enroll.KeyFile, enroll.KeyTPM} {
		b.Run(string(key), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				n++
				id, err := hwid.Parse("bbb", fmt.Sprintf("1813BBBK%04d", n))
				if err != nil {
					b.Fatal(err)
				}
				st, err := state.Open(b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				_, _, err = enroll.Enroll(ctx, st, enroll.Options{ProxyURL: proxy.URL, RootPEM: rootPEM, ID: id, Key: key, TPM: sw.Path(),
					Install: install.Options{Rules: imagespec.DefaultRules()}})
				b.StopTimer()
				if err != nil {
					b.Fatalf("enroll (%s key): %v", key, err)
				}
				if leaf, err := st.Leaf(); err != nil {
					b.Fatal(err)
				} else if ka, _ := pki.KeyAttestationOf(leaf); ka.TPM != (key == enroll.KeyTPM) {
					b.Fatalf("%s key: the certificate's key attestation %+v", key, ka)
				}
				_ = st.Close()
				b.StartTimer()
			}
		})
	}
}
