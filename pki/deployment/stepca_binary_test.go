package deployment_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/testenv"
)

// The configuration init writes runs the real step-ca binary unchanged, and
// its proxy provisioner policy holds there too.
func TestRealStepCABinary(t *testing.T) {
	bin := testenv.Tool(t, "step-ca", "install it with: CGO_ENABLED=0 go install github.com/smallstep/certificates/cmd/step-ca@v0.30.2")
	d := catest.NewPKI(t)
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, catest.Password, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, d.CAConfig(), "--password-file", pw)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Logf("step-ca exit after SIGTERM: %v", err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("step-ca did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("step-ca output:\n%s", out.String())
		}
	}()

	client, err := catest.WaitHealthy(d, exited, 20*time.Second)
	if err != nil {
		t.Fatalf("step-ca binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := &catest.CA{Deployment: d, Client: client}
	_, csr := deviceCSR(t, nil)
	chain, err := client.Sign(ctx, csr, proxyToken(t, c, serialA, csr))
	if err != nil {
		t.Fatalf("sign through the step-ca binary: %v", err)
	}
	if id, err := pki.IdentityOf(chain[0]); err != nil || id.Name != serialA {
		t.Fatalf("identity %v %v", id, err)
	}
	_, csr = deviceCSR(t, nil)
	if _, err := client.Sign(ctx, csr, forgedToken(t, c, map[string]any{"sub": "admin/eve", "sans": []string{"spiffe://fleet.test/admin/eve"}, "cnf": cnfOf(csr)})); err == nil {
		t.Fatal("the step-ca binary signed an admin identity for a proxy token")
	}
}
