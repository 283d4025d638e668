package nspawn_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/internal/testenv/nspawn"
)

// bootCount is a unit that appends a line to /var/lib/boots at every boot:
// it shows that Files and Enable took effect, and counts boots.
const bootCount = `[Unit]
Description=count boots

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo boot >> /var/lib/boots'

[Install]
WantedBy=multi-user.target
`

// The harness itself: the root is cached, a machine boots to running,
// commands run inside, files pass both ways, loop and overlay mounts work
// for a unit of the container, a reboot keeps the tree, a power cut and a
// new start do too, and a poweroff ends cleanly.
func TestMachine(t *testing.T) {
	start := time.Now()
	root := nspawn.Root(t)
	t.Logf("Root (built now, or found in %s): %s", nspawn.CacheDir, time.Since(start))
	start = time.Now()
	if again := nspawn.Root(t); again != root {
		t.Fatalf("Root gave %s, then %s", root, again)
	}
	t.Logf("Root, cached: %s", time.Since(start))
	mksquashfs := testenv.Tool(t, "mksquashfs", "apt-get install squashfs-tools")

	src := t.TempDir()
	unit := filepath.Join(src, "boot-count.service")
	if err := os.WriteFile(unit, []byte(bootCount), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(src, "state")
	if err := os.MkdirAll(filepath.Join(state, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "sub", "key"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	start = time.Now()
	m := nspawn.Boot(t, nspawn.Options{
		Files: []nspawn.File{
			{Src: unit, Dst: "/etc/systemd/system/boot-count.service"},
			{Src: state, Dst: "/var/lib/state"},
		},
		Enable: []string{"boot-count.service"},
	})
	t.Logf("Boot to running: %s", time.Since(start))

	if out, err := m.Run("systemctl", "is-system-running"); err != nil && strings.TrimSpace(out) != "degraded" {
		t.Fatalf("is-system-running: %v", err)
	}
	if out, err := m.Run("cat", "/etc/os-release"); err != nil || !strings.Contains(out, `VERSION_ID="12"`) {
		t.Fatalf("/etc/os-release inside: %q, %v", out, err)
	}
	if out, err := m.Run("stat", "-c", "%a %n", "/var/lib/state/sub", "/var/lib/state/sub/key"); err != nil ||
		out != "700 /var/lib/state/sub\n600 /var/lib/state/sub/key\n" {
		t.Fatalf("the installed tree inside: %q, %v", out, err)
	}
	wantBoots(t, m, 1)

	// A file written inside is in the tree, and not in the cached root.
	if _, err := m.Run("sh", "-c", "echo written inside > /root/note"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(m.Path("/root/note")); err != nil || string(b) != "written inside\n" {
		t.Fatalf("the note through Path: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(root, "root/note")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the note reached the cached root: %v", err)
	}

	mounts(t, m, mksquashfs)

	if err := m.Reboot(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(m.Path("/root/note")); err != nil || string(b) != "written inside\n" {
		t.Fatalf("the note after a reboot: %q, %v", b, err)
	}
	wantBoots(t, m, 2)

	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Run("true"); !errors.Is(err, nspawn.ErrNotRunning) {
		t.Fatalf("Run after Kill: %v, want ErrNotRunning", err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	wantBoots(t, m, 3)

	if err := m.Poweroff(); err != nil {
		t.Fatal(err)
	}
	if err := m.Poweroff(); !errors.Is(err, nspawn.ErrNotRunning) {
		t.Fatalf("a second Poweroff: %v, want ErrNotRunning", err)
	}
}

func wantBoots(t *testing.T, m *nspawn.Machine, n int) {
	t.Helper()
	b, err := os.ReadFile(m.Path("/var/lib/boots"))
	if err != nil || string(b) != strings.Repeat("boot\n", n) {
		t.Fatalf("the enabled unit's record of boots: %q, %v; want %d", b, err, n)
	}
}

// mounts loop-mounts a squashfs image and lays overlays from it, as a unit
// of the container (systemd-run): with nspawn's capabilities, seccomp
// filter and devices, as the device's own mount unit would run.
func mounts(t *testing.T, m *nspawn.Machine, mksquashfs string) {
	t.Helper()
	img := t.TempDir()
	if err := os.MkdirAll(filepath.Join(img, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, "etc", "from-image"), []byte("squashed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mksquashfs, img, m.Path("/srv/image.sqfs"), "-noappend", "-quiet").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, out)
	}
	unit := []string{"systemd-run", "--wait", "--pipe", "--quiet", "--"}
	for _, step := range []struct{ script, want string }{
		{"mkdir -p /mnt/image && mount -o loop,ro -t squashfs /srv/image.sqfs /mnt/image && cat /mnt/image/etc/from-image", "squashed\n"},
		// The device's shape: read-only, the image's etc/ over /etc.
		{"mount -t overlay overlay -o ro,lowerdir=/mnt/image/etc:/etc /etc && cat /etc/from-image /etc/os-release | head -2", "squashed\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"},
		// Writable, the upper directory on a tmpfs.
		{"mkdir -p /run/ov/upper /run/ov/work /mnt/rw && mount -t overlay overlay -o lowerdir=/mnt/image/etc,upperdir=/run/ov/upper,workdir=/run/ov/work /mnt/rw && echo new > /mnt/rw/added && cat /run/ov/upper/added", "new\n"},
		{"umount /mnt/rw /etc /mnt/image && ! losetup -j /srv/image.sqfs | grep .", ""},
	} {
		out, err := m.Run(append(unit, "sh", "-c", step.script)...)
		if err != nil || out != step.want {
			t.Fatalf("%s: %q, %v; want %q", step.script, out, err, step.want)
		}
	}
}

// Options: a network namespace to join, and bind mounts.
func TestMachineOptions(t *testing.T) {
	ip := testenv.Tool(t, "ip", "apt-get install iproute2")
	nspawn.Root(t) // skips before the namespace is made, if it skips
	// Other checkouts may run this test meanwhile.
	ns := "provnspawn" + strconv.Itoa(os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { _ = exec.Command(ip, "netns", "del", ns).Run() })
	run("netns", "add", ns)
	// Both ends of the pair in the namespace: nothing on the host to clash.
	run("-n", ns, "link", "add", "provin", "type", "veth", "peer", "name", "provout")
	run("-n", ns, "addr", "add", "10.99.0.1/24", "dev", "provin")

	shared, ro := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "given"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := nspawn.Boot(t, nspawn.Options{
		NetworkNamespace: "/run/netns/" + ns,
		Binds: []nspawn.Bind{
			{Src: shared, Dst: "/mnt/shared"},
			{Src: ro, Dst: "/mnt/ro", ReadOnly: true},
		},
	})
	if out, err := m.Run("ip", "-o", "addr", "show", "provin"); err != nil || !strings.Contains(out, "10.99.0.1/24") {
		t.Fatalf("the namespace's interface inside: %q, %v", out, err)
	}
	if _, err := m.Run("sh", "-c", "cat /mnt/ro/given > /mnt/shared/copied"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(shared, "copied")); err != nil || string(b) != "from the host\n" {
		t.Fatalf("through the binds: %q, %v", b, err)
	}
	if out, err := m.Run("touch", "/mnt/ro/x"); err == nil {
		t.Fatalf("wrote to a read-only bind: %q", out)
	}
	if err := m.Poweroff(); err != nil {
		t.Fatal(err)
	}
}
