package nspawn

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/internal/testenv"
)

// Bounds of every wait. A boot to "running" takes about a second here
// (0.9 s, on a cached root); the bounds leave room for a loaded 2-core
// machine and a slow shutdown (a unit that ignores SIGTERM holds it 10 s).
const (
	bootTimeout = 2 * time.Minute
	stopTimeout = time.Minute
	runTimeout  = 2 * time.Minute
)

// rebootStatus is systemd-nspawn's exit status when its container
// rebooted.
const rebootStatus = 133

// containerEnv is the environment of commands run inside: the container's
// own PATH, not the test's.
var containerEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
	"TERM=dumb",
	"SYSTEMD_COLORS=0",
}

// Options says what a machine gets besides the root.
type Options struct {
	// Files are copied from the host into the tree before the first boot:
	// a binary, units, a state directory.
	Files []File
	// Enable are units enabled before the first boot (systemctl enable,
	// run in the tree), typically ones installed by Files.
	Enable []string
	// Binds are host paths bind-mounted into the container.
	Binds []Bind
	// NetworkNamespace is the path of a network namespace for the
	// container to join (/run/netns/NAME, made by `ip netns add`); empty
	// shares the host's network.
	NetworkNamespace string
}

// File is a host file or directory tree copied into the machine's tree.
type File struct {
	Src string // on the host
	Dst string // absolute, inside the container
}

// Bind is a host path bind-mounted into the container.
type Bind struct {
	Src, Dst string
	ReadOnly bool
}

// Machine is a booted container. Run may be called from several
// goroutines; the other methods may not.
type Machine struct {
	t       testing.TB
	name    string
	tree    string // the overlay's merged directory, the container's root
	args    []string
	nspawn  string
	nsenter string
	console testenv.Buffer
	shown   int // how much of the console is in the test log already
	boots   int
	mounted bool
	mu      sync.Mutex
	proc    *process // the running container; nil when off
}

// process is one run of systemd-nspawn.
type process struct {
	cmd  *exec.Cmd
	init int // the container's PID 1, as the host sees it
	done chan struct{}
	err  error // cmd.Wait's result, once done is closed
}

// Boot boots a container on a writable copy of Root: an overlay over it
// with the upper directory in t.TempDir(), so the cache never changes and a
// test starts in milliseconds. It installs opts.Files, enables opts.Enable,
// boots, and returns once systemctl is-system-running says "running" or
// "degraded" (failed units are logged). At the test's end the machine is
// powered off (or killed) and the overlay unmounted; if the test failed,
// the console is in its log.
func Boot(t testing.TB, opts Options) *Machine {
	t.Helper()
	root := Root(t)
	nspawn := testenv.Tool(t, "systemd-nspawn", "apt-get install systemd-container")
	nsenter := testenv.Tool(t, "nsenter", "apt-get install util-linux")
	dir := t.TempDir()
	if strings.ContainsAny(dir, ",:\\") {
		t.Fatalf("nspawn: the overlay's options cannot name %s (a comma, colon or backslash): rename the test", dir)
	}
	m := &Machine{t: t, name: machineName(), tree: filepath.Join(dir, "tree"), nspawn: nspawn, nsenter: nsenter}
	t.Cleanup(m.cleanup)
	if err := m.mountTree(root, dir); err != nil {
		t.Fatalf("nspawn: %v", err)
	}
	if err := install(m.tree, opts.Files); err != nil {
		t.Fatalf("nspawn: %v", err)
	}
	if err := enable(m.tree, opts.Enable); err != nil {
		t.Fatalf("nspawn: %v", err)
	}
	loops, err := loopDevices()
	if err != nil {
		t.Fatalf("nspawn: %v", err)
	}
	m.args = nspawnArgs(m.name, m.tree, opts, loops)
	if err := m.Start(); err != nil {
		t.Fatalf("nspawn: %v", err)
	}
	return m
}

// machineName is unique per machine: nspawn keys its runtime state
// (/run/systemd/nspawn/propagate/NAME) by it, and it is the container's
// hostname.
func machineName() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return fmt.Sprintf("prov-%x", b)
}

func nspawnArgs(name, tree string, opts Options, devices []string) []string {
	args := []string{
		"--register=no", "--keep-unit", "--boot",
		"--directory=" + tree,
		"--machine=" + name,
		"--console=read-only", // the console is a log here, never a terminal
		"--setenv=SYSTEMD_COLORS=0",
	}
	for _, d := range devices {
		args = append(args, "--bind="+escapeBind(d))
	}
	for _, b := range opts.Binds {
		flag := "--bind="
		if b.ReadOnly {
			flag = "--bind-ro="
		}
		args = append(args, flag+escapeBind(b.Src)+":"+escapeBind(b.Dst))
	}
	if opts.NetworkNamespace != "" {
		args = append(args, "--network-namespace-path="+opts.NetworkNamespace)
	}
	return args
}

// escapeBind escapes what --bind splits on.
func escapeBind(p string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(p)
}

// Start boots the machine's tree, as it is, once more: after Poweroff or
// Kill (a power cut) it is the power coming back. It returns when the
// system is up, as Boot does.
func (m *Machine) Start() error {
	if m.running() != nil {
		return fmt.Errorf("start %s: it is already running", m.name)
	}
	m.boots++
	_, _ = fmt.Fprintf(&m.console, "---- nspawn: boot %d of %s ----\n", m.boots, m.name)
	p, err := m.spawn()
	if err != nil {
		m.showConsole()
		return fmt.Errorf("start %s: %w", m.name, err)
	}
	if err := m.waitUp(p); err != nil {
		m.showConsole()
		return fmt.Errorf("boot %s: %w", m.name, err)
	}
	return nil
}

// spawn starts systemd-nspawn and finds the container's PID 1. nspawn is
// started from a goroutine locked to its thread until nspawn exits, so
// that Pdeathsig (tied to the thread that forked) fires only when the test
// process dies: nspawn then asks its container to power off.
func (m *Machine) spawn() (*process, error) {
	cmd := exec.Command(m.nspawn, m.args...)
	cmd.Stdout, cmd.Stderr = &m.console, &m.console
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.WaitDelay = 10 * time.Second // for a console pipe some stray process still holds
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("systemd-nspawn: %w", err)
	}
	err := testenv.WaitFor(bootTimeout, func() error {
		if p.exited() {
			return testenv.Final(fmt.Errorf("systemd-nspawn ended before its container started: %w", p.exit()))
		}
		pid, err := containerInit(cmd.Process.Pid)
		p.init = pid
		return err
	})
	if err != nil {
		// SIGTERM: nspawn powers off a container it did start after all.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-p.done
		}
		return nil, err
	}
	m.mu.Lock()
	m.proc = p
	m.mu.Unlock()
	return p, nil
}

// exit is how nspawn ended, once it has: cmd.Wait's error, which is nil
// for status 0.
func (p *process) exit() error {
	if p.err == nil {
		return errors.New("exit status 0")
	}
	return p.err
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// containerInit finds the container's PID 1: the child of nspawn that is
// PID 1 in its own PID namespace (the last field of NSpid).
func containerInit(nspawn int) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	ppid := "PPid:\t" + strconv.Itoa(nspawn) + "\n"
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil || !strings.Contains(string(status), ppid) {
			continue // gone since the listing, or not nspawn's
		}
		_, nspid, _ := strings.Cut(string(status), "\nNSpid:")
		nspid, _, _ = strings.Cut(nspid, "\n")
		if f := strings.Fields(nspid); len(f) > 1 && f[len(f)-1] == "1" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("systemd-nspawn (pid %d) has no child that is PID 1 of a namespace yet", nspawn)
}

// waitUp waits for systemd to finish booting. is-system-running --wait
// blocks until then, but fails at once while the manager does not answer
// yet, so it is tried again until the deadline.
func (m *Machine) waitUp(p *process) error {
	deadline := time.Now().Add(bootTimeout)
	var state string
	err := testenv.WaitFor(bootTimeout, func() error {
		if p.exited() {
			return testenv.Final(fmt.Errorf("systemd-nspawn exited during boot: %w", p.exit()))
		}
		out, err := m.run(p, time.Until(deadline), "systemctl", "is-system-running", "--wait")
		state = strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			return nil
		}
		return fmt.Errorf("not running or degraded: %w", err)
	})
	if err != nil {
		if !p.exited() { // what it still waits for
			jobs, _ := m.run(p, 10*time.Second, "systemctl", "list-jobs", "--no-legend", "--plain")
			err = fmt.Errorf("%w\njobs still queued:\n%s", err, jobs)
		}
		return fmt.Errorf("%w: %w", ErrNotUp, err)
	}
	if state == "degraded" {
		failed, _ := m.run(p, runTimeout, "systemctl", "list-units", "--failed", "--no-legend", "--plain")
		m.t.Logf("nspawn: %s is up but degraded; failed units:\n%s", m.name, failed)
	}
	return nil
}

func (m *Machine) running() *process {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil && m.proc.exited() {
		m.proc = nil // it died on its own
	}
	return m.proc
}

// Run runs a command inside the container (nsenter into the namespaces of
// its PID 1: mount, UTS, IPC, network, PID) and returns its output,
// standard output and error together. systemctl there talks to the
// container's systemd. The command has the test's privileges, not those of
// a unit: to run something as a service of the container would be (its
// capability set, its seccomp filter, in its cgroup), wrap it in
// `systemd-run --wait --pipe --quiet --`. The error names the command
// and includes its output.
func (m *Machine) Run(args ...string) (string, error) {
	p := m.running()
	if p == nil {
		return "", fmt.Errorf("run %q in %s: %w", strings.Join(args, " "), m.name, ErrNotRunning)
	}
	return m.run(p, runTimeout, args...)
}

func (m *Machine) run(p *process, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	enter := []string{"--target", strconv.Itoa(p.init), "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--"}
	cmd := exec.CommandContext(ctx, m.nsenter, append(enter, args...)...)
	cmd.Env = containerEnv
	// nsenter forks to enter the PID namespace; killing its process group
	// takes the command too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("not done within %s: %w", timeout, ctx.Err())
	}
	if err != nil {
		if len(out) > 0 {
			err = fmt.Errorf("%w\n%s", err, strings.TrimSuffix(string(out), "\n"))
		}
		return string(out), fmt.Errorf("run %q in %s: %w", strings.Join(args, " "), m.name, err)
	}
	return string(out), nil
}

// Path is the host path of p in the machine's tree, to read a result or
// place a file. It is the tree under the container's mounts: what the
// container keeps on a tmpfs (/run, /tmp) or mounts itself is not there
// (read it with Run), and an absolute symbolic link in the tree points into
// the host, not the container.
func (m *Machine) Path(p string) string {
	return filepath.Join(m.tree, p)
}

// Poweroff powers the machine off (systemctl poweroff) and waits for
// systemd-nspawn to exit 0.
func (m *Machine) Poweroff() error {
	return m.shutdown("poweroff", 0)
}

// Reboot reboots the machine (systemctl reboot, after which nspawn exits
// 133) and boots it again on the same tree, keeping its files; it returns
// when the system is up again.
func (m *Machine) Reboot() error {
	if err := m.shutdown("reboot", rebootStatus); err != nil {
		return err
	}
	return m.Start()
}

func (m *Machine) shutdown(verb string, want int) error {
	p := m.running()
	if p == nil {
		return fmt.Errorf("%s %s: %w", verb, m.name, ErrNotRunning)
	}
	// The manager may drop the connection as it goes down, failing
	// systemctl after the job was queued: nspawn's exit is the verdict.
	_, runErr := m.run(p, runTimeout, "systemctl", verb)
	if err := m.waitExit(p); err != nil {
		m.showConsole()
		if runErr != nil {
			err = fmt.Errorf("%w; and %w", err, runErr)
		}
		return fmt.Errorf("%s %s: %w", verb, m.name, err)
	}
	if got := p.cmd.ProcessState.ExitCode(); got != want {
		m.showConsole()
		return fmt.Errorf("%s %s: %w: %d, want %d", verb, m.name, ErrExitStatus, got, want)
	}
	return nil
}

// Kill cuts the power: SIGKILL to the container's PID 1, after which the
// kernel ends every process in its namespace and nspawn exits. Start boots
// the tree again, as it was left.
func (m *Machine) Kill() error {
	p := m.running()
	if p == nil {
		return fmt.Errorf("kill %s: %w", m.name, ErrNotRunning)
	}
	if err := syscall.Kill(p.init, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", m.name, p.init, err)
	}
	if err := m.waitExit(p); err != nil {
		m.showConsole()
		return fmt.Errorf("kill %s: %w", m.name, err)
	}
	return nil
}

// waitExit waits for nspawn to exit, for at most stopTimeout.
func (m *Machine) waitExit(p *process) error {
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		return fmt.Errorf("systemd-nspawn (pid %d) still running after %s", p.cmd.Process.Pid, stopTimeout)
	}
	m.mu.Lock()
	m.proc = nil
	m.mu.Unlock()
	return nil
}

// Console is everything the machine printed on its console so far, every
// boot, and systemd-nspawn's own messages.
func (m *Machine) Console() string {
	return m.console.String()
}

// showConsole puts in the test log what of the console is not there yet.
func (m *Machine) showConsole() {
	all := m.console.String()
	if len(all) > m.shown {
		m.t.Logf("nspawn: console of %s:\n%s", m.name, all[m.shown:])
		m.shown = len(all)
	}
}

// cleanup leaves nothing running or mounted: it powers the machine off,
// kills it if that fails, and unmounts the tree.
func (m *Machine) cleanup() {
	if p := m.running(); p != nil {
		if err := m.Poweroff(); err != nil {
			m.t.Errorf("nspawn: at the test's end: %v", err)
			if err := m.Kill(); err != nil {
				m.t.Errorf("nspawn: at the test's end: %v", err)
			}
		}
	}
	if m.t.Failed() {
		m.showConsole()
	}
	if !m.mounted {
		return
	}
	// Busy a moment after the container is gone while the kernel
	// releases its mount namespace.
	err := testenv.WaitFor(stopTimeout, func() error {
		err := syscall.Unmount(m.tree, 0)
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("unmount %s: %w", m.tree, err)
		}
		return testenv.Final(err)
	})
	if err != nil {
		m.t.Errorf("nspawn: %v (a loop device or process may still hold a file there)", err)
	}
}
