package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// The built binary runs the embedded CA and stops cleanly on SIGTERM.
func TestCAStopsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped in -short")
	}
	bin := filepath.Join(t.TempDir(), "prov-pki")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	d := catest.NewPKI(t)
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, catest.Password, 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr testenv.Buffer // read while prov-pki may still write
	cmd := exec.Command(bin, "ca", "--dir", d.Dir, "--password-file", pw)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	if _, err := catest.WaitHealthy(d, cmd.Process.Pid, exited, 20*time.Second); err != nil {
		t.Fatalf("prov-pki ca: %v\n%s", err, stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("no exit 15s after SIGTERM\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "step-ca stopped") {
		t.Errorf("no clean-stop log line:\n%s", stderr.String())
	}
	// The database was released: the CA starts again on the same files.
	catest.Run(t, d)
}
