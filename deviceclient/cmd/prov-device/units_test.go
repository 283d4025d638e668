package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/internal/testenv"
)

// units are the unit files the device ships.
var units = []string{"prov-device-mount.service", "prov-device.service", "prov-device-remount.service", "prov-device-remount.path"}

// exposure is the highest `systemd-analyze security` rating each service
// may have (lower is safer; before the units were hardened: 9.5 and 8.5).
// The mount units keep CAP_SYS_ADMIN and no mount namespace of their own:
// their mounts must reach the system.
var exposure = map[string]float64{
	"prov-device.service":         1.8,
	"prov-device-mount.service":   3.1,
	"prov-device-remount.service": 3.5,
}

// execLines returns the Exec* command lines of a unit file.
func execLines(t *testing.T, unit string) [][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "systemd", unit))
	if err != nil {
		t.Fatal(err)
	}
	var cmds [][]string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.HasPrefix(k, "Exec") {
			cmds = append(cmds, strings.Fields(v))
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("%s has no Exec lines", unit)
	}
	return cmds
}

// The units' command lines are ones prov-device accepts: every flag is
// known (a typo would make the boot-time mount fail for good).
func TestUnitCommandLines(t *testing.T) {
	shipped, err := filepath.Glob(filepath.Join("..", "..", "systemd", "prov-device*"))
	if err != nil || len(shipped) != len(units) {
		t.Fatalf("deviceclient/systemd holds %v; the tests know %v", shipped, units)
	}
	for _, u := range units {
		if !strings.HasSuffix(u, ".service") {
			continue
		}
		for _, cmd := range execLines(t, u) {
			if cmd[0] != "/usr/bin/prov-device" {
				t.Fatalf("%s runs %s", u, cmd[0])
			}
			var out, errb bytes.Buffer
			code := cli.Main(context.Background(), append(cmd[1:], "-h"), &out, &errb)
			// -h after known flags is the command's help: exit 0, on stdout.
			if code != cli.ExitOK || errb.Len() > 0 || !strings.Contains(out.String(), "usage: prov-device "+cmd[1]) {
				t.Errorf("%s: %v: exit %d\n%s%s", u, cmd, code, out.String(), errb.String())
			}
		}
	}
}

// systemd itself accepts the units.
func TestUnitsVerify(t *testing.T) {
	analyze := testenv.Tool(t, "systemd-analyze", "apt-get install systemd")
	dir := t.TempDir()
	bin := filepath.Join(dir, "prov-device")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var paths []string
	for _, u := range units {
		data, err := os.ReadFile(filepath.Join("..", "..", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, bytes.ReplaceAll(data, []byte("/usr/bin/prov-device"), []byte(bin)), 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput() //nolint:gosec // a test
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The services stay as hardened as they are: systemd's own rating.
func TestUnitsExposure(t *testing.T) {
	analyze := testenv.Tool(t, "systemd-analyze", "apt-get install systemd")
	for unit, limit := range exposure {
		out, err := exec.Command(analyze, "security", "--offline=true", "--no-pager", filepath.Join("..", "..", "systemd", unit)).CombinedOutput() //nolint:gosec // a test
		if err != nil {
			t.Fatalf("%s: %v\n%s", unit, err, out)
		}
		_, rest, ok := bytes.Cut(out, []byte("Overall exposure level for "+unit+": "))
		var level float64
		if ok {
			_, err = fmt.Sscanf(string(rest), "%g", &level)
		}
		if !ok || err != nil {
			t.Fatalf("%s: no overall exposure level in\n%s", unit, out)
		}
		if level > limit {
			t.Errorf("%s: exposure %.1f, over %.1f:\n%s", unit, level, limit, out)
		}
	}
}

// namespaceOptions give a service a mount namespace of its own (see
// systemd.exec): mounts it makes would not reach the system.
var namespaceOptions = []string{
	"PrivateTmp", "PrivateDevices", "PrivateMounts", "PrivateNetwork", "PrivateIPC", "PrivateUsers",
	"ProtectSystem", "ProtectHome", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
	"ProtectControlGroups", "ProtectProc", "ProcSubset", "ProtectHostname",
	"ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem",
	"BindPaths", "BindReadOnlyPaths", "RootDirectory", "RootImage", "MountAPIVFS", "MountFlags",
	"RuntimeDirectory", "StateDirectory", "CacheDirectory", "LogsDirectory", "ConfigurationDirectory",
}

// The units that mount over /etc must not get a mount namespace of their
// own, or the overlay would be mounted where only they see it (the boot
// test shows what happens then); the daemon, which does not mount, has one.
func TestMountingUnitsShareTheSystemsMounts(t *testing.T) {
	for _, unit := range []string{"prov-device-mount.service", "prov-device-remount.service"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			key, _, ok := strings.Cut(strings.TrimSpace(line), "=")
			if ok && slices.Contains(namespaceOptions, key) {
				t.Errorf("%s sets %s, which gives it a mount namespace of its own: its mounts would not reach the system", unit, line)
			}
		}
	}
	daemon, err := os.ReadFile(filepath.Join("..", "..", "systemd", "prov-device.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(daemon), "--no-mount") || !strings.Contains(string(daemon), "ProtectSystem=strict") {
		t.Error("prov-device.service should run sandboxed with --no-mount, leaving the mounts to the mount units")
	}
}
