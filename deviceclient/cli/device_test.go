package cli_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/proxy/proxytest"
)

func TestMain(m *testing.M) { os.Exit(catest.Main(m)) }

// board makes a fake BeagleBone Black devicetree.
func board(t *testing.T, serial string) string {
	t.Helper()
	dt := filepath.Join(t.TempDir(), "dt")
	if err := os.MkdirAll(dt, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"model": "TI AM335x BeagleBone Black\x00", "serial-number": serial + "\x00"} {
		if err := os.WriteFile(filepath.Join(dt, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dt
}

// TestDeviceCommands runs the device's life through the command line:
// enroll through a real proxy, status, update from core, mount over a
// fake /etc (as root), a moved SD card, unmount.
func TestDeviceCommands(t *testing.T) {
	core := coretest.Start(t, "")
	proxy := proxytest.Start(t, core, "networks: [\"127.0.0.0/8\"]\n")
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	dt := board(t, "1813BBBK0201")
	hw := []string{"--state", stateDir, "--dt-root", dt}

	code, out, errOut := run(append([]string{"enroll", "--proxy", proxy.URL, "--root", core.RootCert()}, hw...)...)
	if code != cli.ExitOK || !strings.Contains(out, "enrolled bbb 1813BBBK0201 as ") {
		t.Fatalf("enroll: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run("status", "--state", stateDir, "--json", "--run-dir", filepath.Join(dir, "run"), "--target", filepath.Join(dir, "etc"))
	var st struct {
		Enrolled         bool
		Serial           string
		Generation       uint64
		CertificateState string
		ClockFloor       time.Time // what enrollment's chains and bundle proved
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 || !st.Enrolled || st.Generation != 1 || st.CertificateState != "valid" || st.ClockFloor.IsZero() {
		t.Fatalf("status: %d %v\n%s", code, err, out)
	}
	if code, out, errOut = run(append([]string{"enroll", "--proxy", proxy.URL, "--root", core.RootCert()}, hw...)...); code != cli.ExitError || !strings.Contains(errOut, "already enrolled") {
		t.Fatalf("enroll twice: %d\n%s%s", code, out, errOut)
	}

	// An admin changes the device's data; update fetches generation 2.
	admin := core.Client(t, core.Admin(t))
	if _, err := admin.SetDeviceData(context.Background(), st.Serial, 1, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": "lab-3\n"}}); err != nil {
		t.Fatal(err)
	}
	mnt := []string{"--target", filepath.Join(dir, "etc"), "--run-dir", filepath.Join(dir, "run")}
	if code, out, errOut = run(append(append([]string{"update"}, hw...), mnt...)...); code != 0 || !strings.Contains(out, "installed generation 2") {
		t.Fatalf("update: %d\n%s%s", code, out, errOut)
	}
	if code, out, _ = run(append(append([]string{"update"}, hw...), mnt...)...); code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("update again: %d\n%s", code, out)
	}

	// The SD card in another board: refused with its own exit code.
	moved := []string{"--state", stateDir, "--dt-root", board(t, "1813BBBK0299")}
	for _, cmd := range []string{"update", "mount"} {
		code, _, errOut = run(append(append([]string{cmd}, moved...), mnt...)...)
		if code != cli.ExitIDChanged || !strings.Contains(errOut, "hardware ID changed since enrollment") || !strings.Contains(errOut, st.Serial) {
			t.Fatalf("%s on another board: %d\n%s", cmd, code, errOut)
		}
	}

	if os.Geteuid() != 0 {
		testenv.Root(t, "mount over a directory")
		return
	}
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "os-release"), []byte("ID=fleetos\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut = run(append(append([]string{"mount"}, hw...), mnt...)...); code != 0 || !strings.Contains(out, "mounted generation 2") {
		t.Fatalf("mount: %d\n%s%s", code, out, errOut)
	}
	t.Cleanup(func() { run(append([]string{"unmount"}, mnt...)...) })
	site, _ := os.ReadFile(filepath.Join(dir, "etc", "prov", "data", "site"))
	osr, _ := os.ReadFile(filepath.Join(dir, "etc", "os-release"))
	if string(site) != "lab-3\n" || string(osr) != "ID=fleetos\n" {
		t.Fatalf("through the overlay: site %q, os-release %q", site, osr)
	}
	// An update while mounted mounts the new image.
	if _, err := admin.SetDeviceData(context.Background(), st.Serial, 2, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": "lab-4\n"}}); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut = run(append(append([]string{"update"}, hw...), mnt...)...); code != 0 || !strings.Contains(out, "installed generation 3") {
		t.Fatalf("update while mounted: %d\n%s%s", code, out, errOut)
	}
	if site, _ := os.ReadFile(filepath.Join(dir, "etc", "prov", "data", "site")); string(site) != "lab-4\n" {
		t.Fatalf("after the update the overlay shows %q", site)
	}
	code, out, _ = run(append([]string{"status", "--state", stateDir}, mnt...)...)
	if code != 0 || !strings.Contains(out, "generation 3 over "+filepath.Join(dir, "etc")) || !strings.Contains(out, "through /dev/loop") {
		t.Fatalf("status: %d\n%s", code, out)
	}
	// status reports what the kernel has mounted: the overlay taken off
	// behind the device's back is a disagreement, with its own exit code.
	if err := unix.Unmount(filepath.Join(dir, "etc"), unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(append([]string{"status", "--state", stateDir}, mnt...)...)
	if code != cli.ExitMismatch || !strings.Contains(out, "DISAGREES    generation 3 is recorded as mounted over") || !strings.Contains(out, "nothing mounted") {
		t.Fatalf("status with the overlay gone: %d\n%s", code, out)
	}
	code, out, _ = run(append([]string{"status", "--state", stateDir, "--json"}, mnt...)...)
	var report struct{ Disagreements []string }
	if err := json.Unmarshal([]byte(out), &report); err != nil || code != cli.ExitMismatch || len(report.Disagreements) != 1 {
		t.Fatalf("status --json with the overlay gone: %d %v\n%s", code, err, out)
	}
	if code, out, errOut = run(append(append([]string{"mount"}, hw...), mnt...)...); code != 0 {
		t.Fatalf("mount again: %d\n%s%s", code, out, errOut)
	}
	if code, out, _ = run(append([]string{"status", "--state", stateDir}, mnt...)...); code != 0 || strings.Contains(out, "DISAGREES") {
		t.Fatalf("status after mounting again: %d\n%s", code, out)
	}

	// The current bundle changed on the card, found at boot: the previous
	// image is mounted, the mount fails with the reason (exit 3, so the
	// unit fails), status says so, and the next update fetches the current
	// generation again although core's ETag has not changed.
	s, err := state.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	cur, _, err := s.Pointer(state.Current)
	_ = s.Close()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(cur.Path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-100] ^= 1
	if err := os.WriteFile(cur.Path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = run(append(append([]string{"mount"}, hw...), mnt...)...)
	if code != cli.ExitRefused || !strings.Contains(out, "mounted generation 2") || !strings.Contains(errOut, "does not verify") ||
		!strings.Contains(errOut, "the previous one, generation 2, is current") {
		t.Fatalf("mount with the current bundle changed: %d\n%s%s", code, out, errOut)
	}
	if site, _ := os.ReadFile(filepath.Join(dir, "etc", "prov", "data", "site")); string(site) != "lab-3\n" {
		t.Fatalf("after the fallback the overlay shows %q", site)
	}
	code, out, _ = run(append([]string{"status", "--state", stateDir}, mnt...)...)
	if code != 0 || !strings.Contains(out, "generation   3 (") || !strings.Contains(out, "mounted      generation 2") || !strings.Contains(out, "last error") {
		t.Fatalf("status after the fallback: %d\n%s", code, out)
	}
	if code, out, errOut = run(append(append([]string{"update"}, hw...), mnt...)...); code != 0 || !strings.Contains(out, "installed generation 3") {
		t.Fatalf("update after the fallback: %d\n%s%s", code, out, errOut)
	}
	if site, _ := os.ReadFile(filepath.Join(dir, "etc", "prov", "data", "site")); string(site) != "lab-4\n" {
		t.Fatalf("after fetching generation 3 again the overlay shows %q", site)
	}
	if code, out, errOut = run(append([]string{"unmount"}, mnt...)...); code != 0 {
		t.Fatalf("unmount: %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc", "prov")); !os.IsNotExist(err) {
		t.Fatalf("after unmount the image's files are still there: %v", err)
	}
}
