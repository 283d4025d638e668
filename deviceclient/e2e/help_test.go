package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corecli "github.com/fleetprov/prov/core/cli"
	devicecli "github.com/fleetprov/prov/deviceclient/cli"
	"github.com/fleetprov/prov/internal/cmdline"
	pkicli "github.com/fleetprov/prov/pki/cli"
	proxycli "github.com/fleetprov/prov/proxy/cli"
)

// programs are the four command tables.
var programs = []*cmdline.Program{pkicli.Program(), corecli.Program(), proxycli.Program(), devicecli.Program()}

// helpCase is one command line tried on every command: help asked for is
// the output (stdout, exit 0, nothing on stderr); a usage error is said on
// stderr and exits 2, with nothing on stdout.
type helpCase struct {
	name   string
	args   []string // after the command's words
	code   int
	stdout bool // the output is on stdout (else on stderr)
}

var helpCases = []helpCase{
	{"--help", []string{"--help"}, cmdline.ExitOK, true},
	{"-h", []string{"-h"}, cmdline.ExitOK, true},
	{"-help", []string{"-help"}, cmdline.ExitOK, true},
	{"an unknown flag", []string{"--no-such-flag"}, cmdline.ExitUsage, false},
}

// commandLines are every command of the four programs, found by walking
// their tables (a new command or sub-command is tried without a new test),
// and every group, with the words that name it.
func commandLines(t *testing.T) [][]string {
	t.Helper()
	var lines [][]string
	for _, p := range programs {
		lines = append(lines, []string{p.Name}) // the program itself: its help
		groups := map[string]bool{}
		p.Walk(func(words []string, _ *cmdline.Command) {
			for i := 1; i < len(words); i++ {
				if g := strings.Join(words[:i], " "); !groups[g] {
					groups[g] = true
					lines = append(lines, append([]string{p.Name}, words[:i]...))
				}
			}
			lines = append(lines, append([]string{p.Name}, words...))
		})
	}
	if len(lines) < 25 {
		t.Fatalf("only %d commands found in the four tables", len(lines))
	}
	return lines
}

// check checks one run's exit code and outputs; the output that is due
// must be a usage text, help naming every word of the command line.
func (tc helpCase) check(t *testing.T, line []string, code int, stdout, stderr string) {
	t.Helper()
	out, quiet, where := stdout, stderr, "stdout"
	if !tc.stdout {
		out, quiet, where = stderr, stdout, "stderr"
	}
	run := strings.Join(append(line[:len(line):len(line)], tc.args...), " ")
	switch {
	case code != tc.code:
		t.Errorf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", run, code, tc.code, stdout, stderr)
	case quiet != "":
		t.Errorf("%s: output where none is due:\n%s", run, quiet)
	case !strings.Contains(out, "usage"):
		t.Errorf("%s: %s has no usage:\n%s", run, where, out)
	default:
		named := line
		if !tc.stdout {
			named = line[:1] // a usage error names the command that parsed the flags
		}
		for _, w := range named {
			if !strings.Contains(out, w) {
				t.Errorf("%s: %s does not name %q:\n%s", run, where, w, out)
			}
		}
	}
}

func isCommand(p *cmdline.Program, words []string) bool {
	is := false
	p.Walk(func(w []string, _ *cmdline.Command) {
		if strings.Join(w, " ") == strings.Join(words, " ") {
			is = true
		}
	})
	return is
}

// TestHelpEveryCommand: -h, -help and --help on every command, sub-command
// and group of the four binaries print its usage on stdout and exit 0; an
// unknown flag is a usage error, on stderr, exit 2. Run through each
// program's Main, and (unless -short) through the built binaries, whose
// exit status is what a script sees.
func TestHelpEveryCommand(t *testing.T) {
	lines := commandLines(t)
	// A cancelled context: a command that ran instead of printing its help
	// stops at once (and fails the exit code check).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, line := range lines {
		for _, tc := range helpCases {
			if len(line) == 1 && !tc.stdout {
				continue // a program's flags are its commands'
			}
			var stdout, stderr bytes.Buffer
			code := mains[line[0]](ctx, append(line[1:len(line):len(line)], tc.args...), &stdout, &stderr)
			tc.check(t, line, code, stdout.String(), stderr.String())
		}
	}
	if testing.Short() {
		return
	}
	bin := binaries(t)
	for _, line := range lines {
		for _, tc := range helpCases {
			if len(line) == 1 && !tc.stdout {
				continue
			}
			cmd := exec.Command(filepath.Join(bin, line[0]), append(line[1:len(line):len(line)], tc.args...)...) //nolint:gosec // the binaries just built
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var exit *exec.ExitError
			switch {
			case errors.As(err, &exit):
				code = exit.ExitCode()
			case err != nil:
				t.Fatalf("%s: %v", line, err)
			}
			tc.check(t, line, code, stdout.String(), stderr.String())
		}
	}
}

// TestUsageErrors: the usage errors the dispatcher finds itself (no
// command, an unknown one, a group without its command) stay exit 2 on
// stderr, with nothing on stdout.
func TestUsageErrors(t *testing.T) {
	for _, p := range programs {
		cases := [][]string{nil, {"no-such-command"}}
		p.Walk(func(words []string, _ *cmdline.Command) {
			if len(words) > 1 && !isCommand(p, words[:1]) {
				cases = append(cases, words[:1], append(words[:1:1], "no-such-command"))
			}
		})
		for _, args := range cases {
			var stdout, stderr bytes.Buffer
			code := mains[p.Name](context.Background(), args, &stdout, &stderr)
			if code != cmdline.ExitUsage || stdout.Len() > 0 || !strings.Contains(stderr.String(), "usage") {
				t.Errorf("%s %q: exit %d, want %d with the usage on stderr only\nstdout:\n%s\nstderr:\n%s", p.Name, args, code, cmdline.ExitUsage, stdout.String(), stderr.String())
			}
		}
	}
}
