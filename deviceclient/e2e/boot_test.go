package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/nspawn"
)

// bootState is where the units keep the device's state.
const bootState = "/var/lib/prov-device"

// TestBootUnderSystemd installs prov-device and its units in a Debian 12
// root as docs/device.md says and boots it with systemd as PID 1, on the
// field network, against the real core, step-ca and Mosquitto on the host:
//
//   - the first boot mounts generation 1 before anything reads the
//     hostname or the machine-id: inside, they are the image's;
//   - admin changes reach the daemon over MQTT and the system's /etc shows
//     generations 2 to 5 in a row without a reboot (a file set in one and
//     unset in the next disappears), and status agrees with the kernel;
//   - a reboot keeps the latest;
//   - a tampered current bundle fails the mount unit with the reason in
//     its status, the previous image mounted, until the daemon fetches the
//     current one again;
//   - the remount unit given a mount namespace of its own (PrivateTmp=)
//     cannot update the system's /etc, and status says so;
//   - the watchdog restarts a stopped daemon;
//   - a generation whose health check fails, and one whose check has not
//     passed when the device reboots, each end on the previous generation,
//     marked bad and reported to core; a newer one then installs;
//   - the card in another board fails the mount unit, mounting nothing;
//   - poweroff unmounts cleanly.
func TestBootUnderSystemd(t *testing.T) {
	testenv.Root(t, "network namespaces and a container")
	nspawn.Root(t) // skip early, before starting the services, if it cannot be had
	sys := startAcrossNetworks(t)
	serial, dt := enrollBeagleBone(t, sys)
	admin := sys.core.Client(t, sys.core.Admin(t))

	m := nspawn.Boot(t, nspawn.Options{
		Files:            bootFiles(t, sys),
		Enable:           []string{"prov-device-mount.service", "prov-device.service", "prov-device-remount.path"},
		Binds:            []nspawn.Bind{{Src: dt, Dst: "/sys/firmware", ReadOnly: true}},
		NetworkNamespace: "/run/netns/" + sys.field.name,
	})
	dev := &booted{m: m, serial: serial}

	// First boot: the image is over /etc before anything read it.
	dev.wantGeneration(t, 1)
	img := "/run/prov-device/images/" + dev.mountedImage(t) + "/etc/"
	hostname, machineID := dev.run(t, "cat", img+"hostname"), dev.run(t, "cat", img+"machine-id")
	if strings.TrimSpace(hostname) != "bbb-"+serial || len(strings.TrimSpace(machineID)) != 32 {
		t.Fatalf("the image's hostname %q and machine-id %q", hostname, machineID)
	}
	for _, f := range []struct{ what, cmd, want string }{
		{"the kernel's hostname", "cat /proc/sys/kernel/hostname", hostname},
		{"hostnamed's static hostname", "hostnamectl --static", hostname},
		{"/etc/machine-id", "cat /etc/machine-id", machineID},
	} {
		if got := dev.run(t, "sh", "-c", f.cmd); strings.TrimSpace(got) != strings.TrimSpace(f.want) {
			t.Fatalf("%s inside: %q, the image's: %q", f.what, got, f.want)
		}
	}

	// Admin changes reach the booted system over MQTT, four in a row.
	for gen := uint64(2); gen <= 5; gen++ {
		set := map[string]string{"/etc/prov/data/site": fmt.Sprintf("hall-%d\n", gen)}
		var unset []string
		if gen%2 == 0 {
			set["/etc/prov/data/even"] = "yes\n"
		} else {
			unset = []string{"/etc/prov/data/even"}
		}
		if _, err := admin.SetDeviceData(context.Background(), serial, gen-1, coreapi.DataChange{Set: set, Unset: unset}); err != nil {
			t.Fatal(err)
		}
		dev.wantGeneration(t, gen)
		if got := dev.run(t, "cat", "/etc/prov/data/site"); got != fmt.Sprintf("hall-%d\n", gen) {
			t.Fatalf("generation %d: site %q", gen, got)
		}
		_, err := m.Run("test", "-e", "/etc/prov/data/even")
		if even := gen%2 == 0; even != (err == nil) {
			t.Fatalf("generation %d: /etc/prov/data/even exists: %v", gen, err == nil)
		}
		dev.statusAgrees(t, gen)
	}

	// A reboot keeps the latest.
	if err := m.Reboot(); err != nil {
		t.Fatal(err)
	}
	dev.wantGeneration(t, 5)
	dev.statusAgrees(t, 5)

	// A current bundle changed on the card, found at boot.
	dev.tamperCurrent(t)
	if err := m.Reboot(); err != nil {
		t.Fatal(err)
	}
	out, _ := m.Run("systemctl", "status", "--no-pager", "--lines=20", "prov-device-mount.service")
	if failed, _ := m.Run("systemctl", "is-failed", "prov-device-mount.service"); strings.TrimSpace(failed) != "failed" ||
		!strings.Contains(out, "does not verify") || !strings.Contains(out, "the previous one, generation 4, is current") {
		t.Fatalf("the mount unit after a tampered bundle (is-failed %q):\n%s", failed, out)
	}
	// The previous image was mounted at boot; the daemon then fetches the
	// current one again and the remount unit mounts it.
	dev.wantGeneration(t, 5)
	dev.statusAgrees(t, 5)

	// With a mount namespace of its own the remount unit mounts where
	// nobody else sees it: the system's /etc keeps generation 5 while 6 is
	// installed, and status says they disagree.
	dev.dropIn(t, "prov-device-remount.service", "[Service]\nPrivateTmp=yes\n")
	if _, err := admin.SetDeviceData(context.Background(), serial, 5, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/site": "hall-6\n"}}); err != nil {
		t.Fatal(err)
	}
	dev.waitInstalled(t, 6)
	if err := testenv.WaitFor(20*time.Second, func() error {
		out, err := m.Run("systemctl", "show", "-p", "NRestarts,Result,ActiveState", "prov-device-remount.service")
		if err != nil || !strings.Contains(out, "Result=success") {
			return fmt.Errorf("the remount unit has not run yet: %s %w", out, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := dev.run(t, "cat", "/etc/prov/data/site"); got != "hall-5\n" {
		t.Fatalf("a namespaced remount reached the system's /etc: site %q", got)
	}
	if out, err := m.Run("prov-device", "status", "--state", bootState); err == nil || !strings.Contains(out, "DISAGREES") {
		t.Fatalf("status with generation 6 installed and 5 mounted: %v\n%s", err, out)
	}
	dev.removeDropIn(t, "prov-device-remount.service")
	dev.run(t, "systemctl", "start", "prov-device-remount.service")
	dev.wantGeneration(t, 6)
	dev.statusAgrees(t, 6)

	// The watchdog restarts a stopped daemon.
	dev.dropIn(t, "prov-device.service", "[Service]\nWatchdogSec=3s\n")
	dev.run(t, "systemctl", "restart", "prov-device.service")
	pid := dev.mainPID(t)
	dev.run(t, "kill", "-STOP", strconv.Itoa(pid))
	if err := testenv.WaitFor(60*time.Second, func() error {
		if now := dev.mainPID(t); now == pid || now == 0 {
			return fmt.Errorf("the daemon is still PID %d (now %d)", pid, now)
		}
		return nil
	}); err != nil {
		t.Fatalf("the watchdog: %v\n%s", err, dev.diagnose())
	}

	// A generation whose own health check fails: the daemon runs it once
	// the remount unit mounted it, falls back, and the remount unit mounts
	// generation 6 again; 7 is bad, and core hears of it with the output.
	setCheck := func(from uint64, change coreapi.DataChange) {
		if _, err := admin.SetDeviceData(context.Background(), serial, from, change); err != nil {
			t.Fatal(err)
		}
	}
	check := func(argv string) coreapi.DataChange {
		return coreapi.DataChange{Set: map[string]string{agent.ImageHealthCheck: argv + "\n"}}
	}
	setCheck(6, check(`["/bin/sh","-c","echo broker unreachable; exit 1"]`))
	dev.wantFellBack(t, admin, 7, 6, "broker unreachable")
	dev.statusAgrees(t, 6)

	// A reboot before the check passed (it hangs): the boot-time mount
	// counts the boot, fails generation 8 with the reason in its status,
	// and mounts 6.
	setCheck(7, check(`["/bin/sleep","600"]`))
	dev.waitTrial(t, 8)
	if err := m.Reboot(); err != nil {
		t.Fatal(err)
	}
	dev.wantFellBack(t, admin, 8, 6, "restarted before the health check")
	if out, _ := m.Run("systemctl", "status", "--no-pager", "--lines=0", "prov-device-mount.service"); !strings.Contains(out, "health check failed") {
		t.Fatalf("the mount unit after a reboot during the trial:\n%s", out)
	}
	// A newer generation without the check installs and mounts as usual.
	setCheck(8, coreapi.DataChange{Unset: []string{agent.ImageHealthCheck}})
	dev.wantGeneration(t, 9)
	dev.statusAgrees(t, 9)

	// The card in another board: the mount unit fails with the reason in
	// its status line and mounts nothing; the daemon does not restart.
	serialFile := filepath.Join(dt, "devicetree", "base", "serial-number")
	if err := os.WriteFile(serialFile, []byte("1813BBBK0B99\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Reboot(); err != nil {
		t.Fatal(err)
	}
	out, _ = m.Run("systemctl", "status", "--no-pager", "--lines=0", "prov-device-mount.service", "prov-device.service")
	if !strings.Contains(out, "status=4") || !strings.Contains(out, "hardware ID changed since enrollment") {
		t.Fatalf("the units with the card in another board:\n%s", out)
	}
	if o, err := m.Run("sh", "-c", "grep -c prov-device /proc/self/mountinfo || true"); err != nil || strings.TrimSpace(o) != "0" {
		t.Fatalf("mounted with the card in another board: %q %v", o, err)
	}
	if err := os.WriteFile(serialFile, []byte("1813BBBK0B07\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Reboot(); err != nil {
		t.Fatal(err)
	}
	dev.wantGeneration(t, 9)

	// Poweroff stops the mount unit, which unmounts cleanly.
	if err := m.Poweroff(); err != nil {
		t.Fatal(err)
	}
	console := m.Console()
	if !strings.Contains(console, "Stopped prov-device-mount.service") && !strings.Contains(console, "Stopped Mount the device's provisioning image over /etc") {
		t.Fatalf("the mount unit was not stopped at poweroff:\n%s", console)
	}
	if strings.Contains(console, "Failed unmounting") {
		t.Fatalf("an unmount failed at poweroff:\n%s", console)
	}
}

// enrollBeagleBone enrolls a BeagleBone Black on the factory network into
// the state directory the container will get; it returns the serial and a
// stand-in for the board's /sys/firmware (its devicetree).
func enrollBeagleBone(t *testing.T, sys *acrossNetworks) (serial, firmware string) {
	t.Helper()
	firmware = t.TempDir()
	base := filepath.Join(firmware, "devicetree", "base")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"model": "TI AM335x BeagleBone Black\x00", "serial-number": "1813BBBK0B07\x00"} {
		if err := os.WriteFile(filepath.Join(base, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := sys.factory.command(sys.bin, "enroll", "--proxy", sys.proxy.URL, "--root", sys.d.RootCert(), "--state", sys.state, "--dt-root", base)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("enroll on the factory network: %v\n%s", err, out)
	}
	st, err := state.Open(sys.state)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	dev, err := st.Device()
	if err != nil {
		t.Fatal(err)
	}
	return dev.Serial, firmware
}

// bootFiles installs prov-device as docs/device.md says: the binary, the
// units, the root, and the enrolled state.
func bootFiles(t *testing.T, sys *acrossNetworks) []nspawn.File {
	t.Helper()
	files := []nspawn.File{
		{Src: sys.bin, Dst: "/usr/bin/prov-device"},
		{Src: sys.d.RootCert(), Dst: "/usr/share/prov/root_ca.crt"},
		{Src: sys.state, Dst: bootState},
	}
	units, err := filepath.Glob(filepath.Join(repoRoot(t), "deviceclient", "systemd", "prov-device*"))
	if err != nil || len(units) < 4 {
		t.Fatalf("the units: %v %v", units, err)
	}
	for _, u := range units {
		files = append(files, nspawn.File{Src: u, Dst: "/usr/lib/systemd/system/" + filepath.Base(u)})
	}
	return files
}

// booted is the device in the container.
type booted struct {
	m      *nspawn.Machine
	serial string
}

func (d *booted) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.m.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// wantGeneration waits until the system's /etc shows the generation.
func (d *booted) wantGeneration(t *testing.T, gen uint64) {
	t.Helper()
	want := fmt.Sprintf("%d", gen)
	if err := testenv.WaitFor(60*time.Second, func() error {
		out, err := d.m.Run("prov-device", "status", "--state", bootState, "--json")
		if !strings.Contains(out, `"generation": `+want) {
			return fmt.Errorf("not installed yet: %w\n%s", err, out)
		}
		return d.mountedGeneration(gen)
	}); err != nil {
		t.Fatalf("generation %d over the system's /etc: %v\n%s", gen, err, d.diagnose())
	}
}

// diagnose is what the units say, for a failure message.
func (d *booted) diagnose() string {
	out, _ := d.m.Run("sh", "-c", "systemctl status --no-pager --lines=0 'prov-device*' 2>&1; "+
		"journalctl -m --no-pager -n 60 -u 'prov-device*' 2>&1")
	return out
}

// waitInstalled waits until the daemon installed the generation.
func (d *booted) waitInstalled(t *testing.T, gen uint64) {
	t.Helper()
	if err := testenv.WaitFor(60*time.Second, func() error {
		out, err := d.m.Run("readlink", bootState+"/"+state.Current)
		if err != nil || !strings.Contains(out, fmt.Sprintf("%020d-", gen)) {
			return fmt.Errorf("current is %q (%w)", out, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("generation %d installed: %v", gen, err)
	}
}

// mountedImage is the directory name of the mounted image.
func (d *booted) mountedImage(t *testing.T) string {
	t.Helper()
	out := d.run(t, "ls", "/run/prov-device/images")
	names := strings.Fields(out)
	if len(names) != 1 {
		t.Fatalf("images mounted: %q", out)
	}
	return names[0]
}

// statusAgrees checks that status, which reads the kernel, agrees.
func (d *booted) statusAgrees(t *testing.T, gen uint64) {
	t.Helper()
	out, err := d.m.Run("prov-device", "status", "--state", bootState)
	if err != nil || strings.Contains(out, "DISAGREES") || !strings.Contains(out, fmt.Sprintf("mounted      generation %d over /etc", gen)) {
		t.Fatalf("status at generation %d: %v\n%s", gen, err, out)
	}
}

// tamperCurrent flips a bit of the current bundle file on the "card".
func (d *booted) tamperCurrent(t *testing.T) {
	t.Helper()
	target := strings.TrimSpace(d.run(t, "readlink", "-f", bootState+"/"+state.Current))
	p := d.m.Path(target)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-200] ^= 1
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (d *booted) dropIn(t *testing.T, unit, body string) {
	t.Helper()
	dir := "/run/systemd/system/" + unit + ".d"
	d.run(t, "mkdir", "-p", dir)
	d.run(t, "sh", "-c", "cat > "+dir+"/test.conf <<'EOF'\n"+body+"EOF\n")
	d.run(t, "systemctl", "daemon-reload")
}

func (d *booted) removeDropIn(t *testing.T, unit string) {
	t.Helper()
	d.run(t, "rm", "-r", "/run/systemd/system/"+unit+".d")
	d.run(t, "systemctl", "daemon-reload")
}

func (d *booted) mainPID(t *testing.T) int {
	t.Helper()
	out := d.run(t, "systemctl", "show", "-p", "MainPID", "--value", "prov-device.service")
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("MainPID %q: %v", out, err)
	}
	return pid
}

// deviceState is what status --json says of the health check.
type deviceState struct {
	Trial  *state.Trial        `json:"trial"`
	Bad    []state.Bad         `json:"bad"`
	Report *state.ReportRecord `json:"report"`
}

func (d *booted) state(t *testing.T) (deviceState, error) {
	t.Helper()
	var s deviceState
	out, _ := d.m.Run("prov-device", "status", "--state", bootState, "--json") // exits 6 while a remount is pending
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		return s, fmt.Errorf("status --json: %w\n%s", err, out)
	}
	return s, nil
}

// mountedGeneration checks that the overlay on the system's /etc is gen's.
func (d *booted) mountedGeneration(gen uint64) error {
	img, err := d.m.Run("sh", "-c", "grep -o 'lowerdir=[^,]*' /proc/self/mountinfo | grep prov-device || true")
	if err != nil {
		return err
	}
	if !strings.Contains(img, fmt.Sprintf("%020d-", gen)) {
		return fmt.Errorf("the overlay on /etc is not generation %d: %q", gen, img)
	}
	return nil
}

// waitTrial waits until gen is mounted on trial.
func (d *booted) waitTrial(t *testing.T, gen uint64) {
	t.Helper()
	if err := testenv.WaitFor(60*time.Second, func() error {
		s, err := d.state(t)
		if err != nil {
			return err
		}
		if s.Trial == nil || s.Trial.Generation != gen {
			return fmt.Errorf("trial %+v", s.Trial)
		}
		return d.mountedGeneration(gen)
	}); err != nil {
		t.Fatalf("generation %d on trial: %v\n%s", gen, err, d.diagnose())
	}
}

// wantFellBack waits until failed is bad, running is over the system's
// /etc, and core has the device's report of the failure, saying why.
func (d *booted) wantFellBack(t *testing.T, admin *coreapi.Client, failed, running uint64, why string) {
	t.Helper()
	if err := testenv.WaitFor(60*time.Second, func() error {
		s, err := d.state(t)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(s.Bad, func(b state.Bad) bool { return b.Generation == failed }) {
			return fmt.Errorf("generation %d is not bad: %+v", failed, s.Bad)
		}
		if err := d.mountedGeneration(running); err != nil {
			return err
		}
		dv, err := admin.Device(context.Background(), d.serial)
		if err != nil {
			return err
		}
		if r := dv.Report; r == nil || r.Generation != failed || r.State != coreapi.StateFailed || r.Running != running || !strings.Contains(r.Error, why) {
			return fmt.Errorf("core has the report %+v; the device %+v", r, s.Report)
		}
		return nil
	}); err != nil {
		t.Fatalf("generation %d failed, %d mounted: %v\n%s", failed, running, err, d.diagnose())
	}
}
