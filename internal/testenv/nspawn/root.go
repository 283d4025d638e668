package nspawn

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
)

// CacheDir holds the built roots, outside any checkout so that every
// worktree and CI run on a machine shares them. Remove it to rebuild.
const CacheDir = "/var/cache/prov-test"

// The root: Debian 12 minbase with systemd as init, and what a device test
// needs inside: mount and losetup (util-linux, mount), ip (iproute2), ps
// and pgrep (procps), modprobe and lsmod (kmod).
const (
	suite   = "bookworm"
	variant = "minbase"
	// mirror is Debian's own redirector, the one this machine's apt
	// sources name (/etc/apt/sources.list.d/debian.sources).
	mirror = "http://deb.debian.org/debian"
)

var packages = []string{"systemd", "systemd-sysv", "dbus", "util-linux", "mount", "iproute2", "procps", "kmod"}

// customize runs in the finished tree. mmdebstrap copies the host's
// /etc/hostname and /etc/resolv.conf in; without them the cached root does
// not depend on the machine that built it, systemd keeps the machine name
// nspawn gives as the hostname, and nspawn supplies resolv.conf.
const customize = `rm -f "$1/etc/hostname" "$1/etc/resolv.conf"`

// buildTimeout bounds mmdebstrap (20 to 50 s here, most of it downloads);
// lockTimeout bounds waiting for another process's build of the same root.
const (
	buildTimeout = 15 * time.Minute
	lockTimeout  = buildTimeout + time.Minute
)

// Root returns the path of a Debian 12 root with systemd (the package
// list above), built once per machine with mmdebstrap into CacheDir and
// shared by every test after that. It is for reading only: Boot lays a
// writable overlay over it.
//
// The cache is keyed by a hash of mmdebstrap's arguments, so a change to
// the package list builds a new root beside the old one. Parallel test
// processes build it once: a lock file serializes them, the build goes into
// a temporary directory that is renamed into place only when mmdebstrap
// succeeded, so a half-built root is never used.
//
// It skips the test (fails under PROV_REQUIRE_ALL=1) when not root or
// when mmdebstrap or systemd-nspawn is missing.
func Root(t testing.TB) string {
	t.Helper()
	testenv.Root(t, "mmdebstrap builds the root as root; systemd-nspawn and mounts need root")
	mmdebstrap := testenv.Tool(t, "mmdebstrap", "apt-get install mmdebstrap")
	testenv.Tool(t, "systemd-nspawn", "apt-get install systemd-container")
	root, err := cachedRoot(CacheDir, mmdebstrap)
	if err != nil {
		t.Fatalf("nspawn root: %v", err)
	}
	return root
}

// mmdebstrapArgs are the build's arguments but the target directory; they
// are what the cache key hashes.
func mmdebstrapArgs() []string {
	return []string{
		"--variant=" + variant,
		"--include=" + strings.Join(packages, ","),
		"--customize-hook=" + customize,
		suite,
	}
}

// rootName is the root's directory name in the cache: a hash of how it is
// built.
func rootName() string {
	sum := sha256.Sum256([]byte(strings.Join(append(mmdebstrapArgs(), mirror, runtime.GOARCH), "\x00")))
	return "debian12-" + hex.EncodeToString(sum[:6])
}

// cachedRoot returns the root in cache, building it with mmdebstrap first
// if it is not there.
func cachedRoot(cache, mmdebstrap string) (string, error) {
	name := rootName()
	root := filepath.Join(cache, name)
	if _, err := os.Stat(root); err == nil {
		return root, nil // complete: it is only ever renamed into place
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("cache directory: %w", err)
	}
	unlock, err := lock(root + ".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(root); err == nil {
		return root, nil // built while this process waited for the lock
	}
	// A build directory left over is a build that was killed: nobody else
	// builds this root while the lock is held. mmdebstrap's own mounts
	// were in its private mount namespace and ended with it.
	stale, err := filepath.Glob(root + ".building-*")
	if err != nil {
		return "", fmt.Errorf("old builds of %s: %w", root, err)
	}
	for _, dir := range stale {
		if err := os.RemoveAll(dir); err != nil {
			return "", fmt.Errorf("remove an interrupted build: %w", err)
		}
	}
	tmp, err := os.MkdirTemp(cache, name+".building-")
	if err != nil {
		return "", fmt.Errorf("build directory: %w", err)
	}
	if err := build(mmdebstrap, append(mmdebstrapArgs(), tmp, mirror)); err != nil {
		_ = os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, root); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("move the finished root into place: %w", err)
	}
	return root, nil
}

// build runs mmdebstrap in a mount namespace of its own: the /dev, /proc
// and /sys it mounts into the tree cannot outlive it, even if it is
// killed, so removing a build directory never reaches the host's /dev.
func build(mmdebstrap string, args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, mmdebstrap, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) } // apt and dpkg too
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("mmdebstrap %s: not done within %s: %w\n%s", strings.Join(args, " "), buildTimeout, ctx.Err(), out)
	}
	if err != nil {
		return fmt.Errorf("mmdebstrap %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// lock takes the lock file path exclusively (flock), waiting at most
// lockTimeout for another process to release it, and returns its release.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	err = testenv.WaitFor(lockTimeout, func() error {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("another process still holds %s (building the root)", path)
		}
		return testenv.Final(err)
	})
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { _ = f.Close() }, nil // closing releases the lock
}
