package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
)

// ImageHealthCheck is the data file by which an image names its own
// health check: the owner's group (or device) data sets it at core like
// any data file, and the image is signed, so it is trusted as the
// device's configuration is. It wins over the device's own check.
const ImageHealthCheck = imagespec.DataDir + "health-check"

// HealthOutputTail is how much of the end of a check's output is kept,
// for the report and the status: within coreapi.MaxReportError with the
// words around it.
const HealthOutputTail = 3 << 10

// ErrHealthCheck is a health check that failed: a non-zero exit, killed,
// or past its timeout.
var ErrHealthCheck = errors.New("health check failed")

// Health says how a newly mounted generation is checked.
type Health struct {
	// Command is the device's own check (argv, run without a shell), used
	// when the image names none; nil: none.
	Command []string
	// Timeout bounds one run (default 2 minutes); at the end the check's
	// whole process group is killed.
	Timeout time.Duration
	// Attempts is how many boots a generation may be mounted in without
	// its check passing before it is failed (default 1: a reboot during
	// the trial fails it).
	Attempts int
	// BootID returns the kernel's boot ID (nil: read
	// /proc/sys/kernel/random/boot_id); a test seam.
	BootID func() (string, error)
}

// ParseCommand reads a health check's command line: a JSON array of
// strings (["/bin/sh","-c","test -s /etc/app.conf"]), or words separated
// by white space, without quoting. Empty is no check.
func ParseCommand(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if !strings.HasPrefix(s, "[") {
		return strings.Fields(s), nil
	}
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil {
		return nil, fmt.Errorf("health check %.80q: want a JSON array of strings or words: %w", s, err)
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("health check %.80q: an empty command", s)
	}
	return argv, nil
}

// readBootID reads the kernel's boot ID.
func readBootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("boot ID: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// CheckResult is one run of a health check.
type CheckResult struct {
	Command  []string
	Duration time.Duration
	// Err is nil when the check passed; otherwise it wraps ErrHealthCheck
	// and says how (exit status, signal, timeout), with the output's end.
	Err    error
	Output string // the last HealthOutputTail bytes of stdout and stderr
}

// RunCheck runs argv without a shell, in a process group of its own, with
// stdin from /dev/null, stdout and stderr kept (their last
// HealthOutputTail bytes), and env added to the environment. At the
// timeout, or when ctx ends, the whole group is killed (SIGKILL): a check
// that forked cannot outlive it.
func RunCheck(ctx context.Context, argv []string, timeout time.Duration, env []string) CheckResult {
	res := CheckResult{Command: argv}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := &tail{max: HealthOutputTail}
	cmd := exec.CommandContext(tctx, argv[0], argv[1:]...) //nolint:gosec // the device's or its signed image's own check
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A process that left the group may hold the output pipe open: stop
	// waiting for it soon after the check itself ended.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	res.Duration = time.Since(start)
	res.Output = out.String()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return res
	case tctx.Err() != nil && ctx.Err() == nil:
		err = fmt.Errorf("%w: %s did not finish within %s and was killed", ErrHealthCheck, quoteArgv(argv), timeout)
	case ctx.Err() != nil:
		err = fmt.Errorf("%w: %s was stopped: %w", ErrHealthCheck, quoteArgv(argv), ctx.Err())
	case errors.As(err, &exitErr):
		err = fmt.Errorf("%w: %s: %s", ErrHealthCheck, quoteArgv(argv), exitErr.String())
	default:
		err = fmt.Errorf("%w: %s: %w", ErrHealthCheck, quoteArgv(argv), err)
	}
	if res.Output != "" {
		err = fmt.Errorf("%w; output: %s", err, res.Output)
	}
	res.Err = err
	return res
}

func quoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = strconv.Quote(a)
	}
	return "[" + strings.Join(q, " ") + "]"
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu    sync.Mutex
	max   int
	buf   []byte
	total int64
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total += int64(len(p))
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

// String is the tail, valid UTF-8, marked when something was cut.
func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.ToValidUTF8(string(t.buf), "?")
	if t.total > int64(len(t.buf)) {
		s = "..." + s
	}
	return strings.TrimRight(s, "\n")
}
