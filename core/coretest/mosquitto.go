package coretest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// Mosquitto runs Debian's mosquitto as core's external broker until the
// test ends, on host (an address to listen on) and a free port, which it
// returns. Clients need certificates from the deployment's root; the
// username is the certificate's CN (a device's serial), core may publish
// to every device topic, and a device may read only its own.
//
// Mosquitto cannot bind port 0 and report the port (its "listener 0" is a
// Unix socket), so this is the one server the tests start on a picked
// port: testenv.StartOnFreePort tries another port when Mosquitto says the
// one it got was taken meanwhile.
func Mosquitto(t testing.TB, c *catest.CA, host string) int {
	t.Helper()
	bin := testenv.Tool(t, "mosquitto", "install Debian's mosquitto")
	dir := t.TempDir()
	core := deployment.DefaultCoreName
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("user core/core\ntopic write prov/devices/#\n\npattern read prov/devices/%u\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	port, err := testenv.StartOnFreePort(host, func(port int) error {
		// As root, mosquitto would drop to its own user and lose the keys
		// in their 0700 directories.
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(`per_listener_settings false
user root
log_dest stderr
allow_anonymous false
persistence false
listener %d %s
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
acl_file %s
`, port, host, c.RootCert(), c.IdentityCert(pki.RoleCore, core), c.IdentityKey(pki.RoleCore, core), acl)), 0o600); err != nil {
			return err
		}
		return startMosquitto(t, bin, conf, port)
	})
	if err != nil {
		t.Fatalf("mosquitto: %v", err)
	}
	return port
}

// startMosquitto runs mosquitto on conf until the test ends and returns
// once it listens on port. If it exits because the port is taken, the
// error wraps syscall.EADDRINUSE: it logs the strerror of the bind and
// exits, so its output names that errno for certain.
func startMosquitto(t testing.TB, bin, conf string, port int) error {
	t.Helper()
	cmd := exec.Command(bin, "-c", conf) //nolint:gosec // a test tool
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	err := testenv.WaitFor(10*time.Second, func() error {
		select {
		case <-exited:
			if strings.Contains(strings.ToLower(out.String()), syscall.EADDRINUSE.Error()) {
				return testenv.Final(fmt.Errorf("port %d: %w", port, syscall.EADDRINUSE))
			}
			if exitErr == nil {
				return testenv.Final(errors.New("exited with status 0"))
			}
			return testenv.Final(fmt.Errorf("exited: %w", exitErr))
		default:
		}
		addrs, err := testenv.ListeningTCP(cmd.Process.Pid)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if int(a.Port()) == port {
				return nil
			}
		}
		return fmt.Errorf("mosquitto (pid %d) does not listen on port %d yet", cmd.Process.Pid, port)
	})
	if errors.Is(err, syscall.EADDRINUSE) {
		return err // it has exited
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("mosquitto:\n%s", out.String())
		}
	})
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out.String())
	}
	return nil
}
