package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/deviceclient/enroll"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/deviceclient/tpmkey/tpmkeytest"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/swtpm"
	"github.com/fleetprov/prov/pki"
)

// A board with its key in a TPM (swtpm) enrolls through a real proxy,
// core and step-ca, with the stand-in attestation verifier in front of the
// proxy (the proxy's own is built beside this); the state directory then
// holds the TPM's blob and no private key. With the TPM key the daemon
// renews at step-ca (same key), follows MQTT and updates from core
// (mTLS); after a power cycle of the TPM the key still loads; with the
// card in a board with another TPM the device refuses with ErrNotThisTPM,
// and the command exits 7 saying what to do.
func TestTPMKey(t *testing.T) {
	f := newFleet(t, "certificateLifetime: 5m")
	sw := swtpm.Start(t)
	v, err := tpmkeytest.New(sw.ManufacturerRoots, sw.ManufacturerChain)
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(f.core.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.ParseTrustBundle(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(f.proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	toProxy := &http.Transport{TLSClientConfig: pki.ClientTLSConfig(nil, roots, pki.ClientOptions{ServerName: u.Hostname(), ServerRoles: []pki.Role{pki.RoleProxy}})}
	const raw = "1813BBBK0201"
	id, err := hwid.Parse("bbb", raw)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	dev, _, err := enroll.Enroll(ctx, st, enroll.Options{ProxyURL: f.proxy.URL, RootPEM: rootPEM, ID: id, Key: enroll.KeyTPM, TPM: sw.Path(),
		Install: install.Options{Rules: imagespec.DefaultRules()}, Client: &http.Client{Transport: v.Transport(toProxy)}})
	if err != nil {
		t.Fatalf("enroll with the key in the TPM: %v", err)
	}
	if v.Attested != 1 {
		t.Fatalf("%d attestations verified, want 1", v.Attested)
	}
	// The state directory: the TPM's blob, no private key.
	if _, err := os.Stat(st.File(state.KeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: %v, want none", state.KeyFile, err)
	}
	blob, err := os.ReadFile(st.File(state.TPMKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpmkey.ParseBlob(blob); err != nil {
		t.Fatal(err)
	}
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(path); bytes.Contains(b, []byte("PRIVATE KEY")) {
				t.Errorf("%s holds a private key", path)
			}
		}
		return nil
	})
	old, err := st.Leaf()
	if err != nil {
		t.Fatal(err)
	}

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

	// The card in a board with another TPM.
	other := swtpm.Start(t)
	if _, err := agent.New(st, agent.Options{TPM: other.Path()}); !errors.Is(err, tpmkey.ErrNotThisTPM) {
		t.Fatalf("another board's TPM: %v, want ErrNotThisTPM", err)
	}
	var out, errb bytes.Buffer
	code := cli.Main(ctx, []string{"update", "--state", dir, "--board", "bbb", "--hwid", raw, "--tpm", other.Path()}, &out, &errb)
	if code != cli.ExitNotThisTPM || !strings.Contains(errb.String(), "put the card back") {
		t.Errorf("prov-device update in another board: exit %d\n%s", code, errb.String())
	}
}
