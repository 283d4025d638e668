// Package testenv lets tests use the real components of this machine
// (step-ca, squashfs-tools, Mosquitto, root for mounts and namespaces) and
// skip with a clear message where one is absent. CI sets PROV_REQUIRE_ALL=1
// (see .ci/run), which turns every such skip into a failure, so a missing
// install step cannot hide behind a green run.
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
