package coretest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
func Mosquitto(t testing.TB, c *catest.CA, host string) int {
	t.Helper()
	bin := testenv.Tool(t, "mosquitto", "install Debian's mosquitto")
	dir := t.TempDir()
	port := catest.FreePort(t)
	core := deployment.DefaultCoreName
	acl := filepath.Join(dir, "acl")
	if err := os.WriteFile(acl, []byte("user core/core\ntopic write prov/devices/#\n\npattern read prov/devices/%u\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	// As root, mosquitto would drop to its own user and lose the keys in
	// their 0700 directories.
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
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf) //nolint:gosec // a test tool
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto:\n%s", out.String())
		}
	})
	addr := net.JoinHostPort(host, fmt.Sprint(port))
	if host == "0.0.0.0" {
		addr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if conn, err := net.Dial("tcp", addr); err == nil {
			_ = conn.Close()
			return port
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto does not listen:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
