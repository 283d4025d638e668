// Package testenv lets tests use the real components of this machine
// (step-ca, squashfs-tools, Mosquitto, root for mounts and namespaces) and
// skip with a clear message where one is absent. CI sets PROV_REQUIRE_ALL=1
// (see .ci/run), which turns every such skip into a failure, so a missing
// install step cannot hide behind a green run.
//
// It also holds the plumbing every such test needs: WaitFor, the one way to
// wait for something to happen (on the condition, never a fixed sleep), and
// ports taken the safe way: servers bind port 0 and report what they got,
// ListeningTCP finds the port of one that does not say, and StartOnFreePort
// is the single fallback for a server that cannot bind port 0 at all.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// RequireAllEnv is the variable that turns skips into failures.
const RequireAllEnv = "PROV_REQUIRE_ALL"

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireAllEnv) == "1" {
		t.Fatalf(format+" ("+RequireAllEnv+"=1: .ci/run should have installed it)", args...)
	}
	t.Skipf(format, args...)
}

// Missing skips the test because something it needs is absent (fails
// under PROV_REQUIRE_ALL=1); the message says what and how to install it.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	skipOrFail(t, format, args...)
}

// Tool returns the path of an executable on PATH, or skips the test.
func Tool(t testing.TB, name, installHint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skipOrFail(t, "%s not found on PATH; %s", name, installHint)
	}
	return p
}

// Root skips the test unless it runs as root.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root: %s", why)
	}
}
