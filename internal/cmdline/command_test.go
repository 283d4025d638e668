package cmdline_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/fleetprov/prov/internal/cmdline"
)

var errRefused = errors.New("refused")

// testProgram is a program with a command of each kind; ran records what
// ran, as "<command name>: <args>".
func testProgram(ran *[]string) *cmdline.Program {
	record := func(_ context.Context, env *cmdline.Env, args []string) error {
		*ran = append(*ran, env.Name()+": "+strings.Join(args, " "))
		return nil
	}
	withLog := func(_ context.Context, env *cmdline.Env, args []string) error {
		fs := env.Flags()
		log := fs.String("log", "", "the log")
		if err := cmdline.Parse(fs, args); err != nil {
			return err
		}
		if err := cmdline.Required([2]string{"log", *log}); err != nil {
			return err
		}
		*ran = append(*ran, env.Name()+": --log "+*log)
		return nil
	}
	fail := func(err error) func(context.Context, *cmdline.Env, []string) error {
		return func(context.Context, *cmdline.Env, []string) error { return err }
	}
	return &cmdline.Program{
		Name:    "prov-test",
		Summary: "the dispatcher's test program",
		Commands: []cmdline.Command{
			{Name: "echo", Args: "[WORD]...", Short: "record the words", Run: record},
			{Name: "audit", Sub: []cmdline.Command{
				{Name: "verify", Args: "--log FILE", Short: "check the log", Run: withLog},
				{Name: "list", Args: "--log FILE", Short: "print the log", Run: withLog},
			}},
			{Name: "refuse", Short: "fail with an error the program gives a code", Run: fail(fmt.Errorf("check bundle: %w", errRefused))},
			{Name: "coded", Short: "fail with an error that carries its code", Run: fail(fmt.Errorf("read: %w", cmdline.WithExitCode(7, errors.New("chain broken"))))},
			{Name: "misuse", Short: "a usage error that also wraps one the program gives a code", Run: fail(fmt.Errorf("%w: bad --x: %w", cmdline.ErrUsage, errRefused))},
			{Name: "break", Short: "fail", Run: fail(errors.New("disk full"))},
			{Name: "quiet", Short: "take no flags, and say nothing", Run: func(_ context.Context, env *cmdline.Env, args []string) error {
				return cmdline.Parse(env.Flags(), args)
			}},
		},
		Footer: "Exit status: 3 refused, 7 broken.",
		Codes:  []cmdline.ExitCode{{Code: 3, Is: []error{errRefused}}},
	}
}

func TestProgramMain(t *testing.T) {
	const usageHead = "prov-test: the dispatcher's test program\n\nusage:\n"
	verifyHelp := "usage: prov-test audit verify --log FILE\n\ncheck the log.\n\nflags:\n  -log string\n    \tthe log\n"
	for _, tc := range []struct {
		name string
		args []string
		code int
		ran  string   // what ran, "" for nothing
		want []string // in stderr
		not  []string // not in stderr
		out  []string // in stdout; none: stdout is empty
	}{
		// Help asked for is the output: stdout, exit 0, nothing on stderr.
		{"-h", []string{"-h"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{usageHead, "  prov-test audit verify --log FILE", "Exit status: 3 refused, 7 broken.", "Run prov-test COMMAND -h for its flags."}},
		{"--help", []string{"--help", "echo"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{usageHead}},
		{"help", []string{"help"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{usageHead}},
		{"a group's -h", []string{"audit", "-h"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{usageHead, "  prov-test audit verify --log FILE", "Run prov-test audit COMMAND -h for its flags."}},
		{"a group's help", []string{"audit", "help"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{"  prov-test audit list "}},
		{"a command's -h", []string{"audit", "verify", "-h"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{verifyHelp}},
		{"a command's --help", []string{"audit", "verify", "--help"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{verifyHelp}},
		{"a command's -help after a flag", []string{"audit", "verify", "--log", "f", "-help"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{verifyHelp}},
		{"a command without flags", []string{"quiet", "-h"}, cmdline.ExitOK, "", nil, []string{"usage"}, []string{"usage: prov-test quiet\n\ntake no flags, and say nothing.\n"}},
		// Usage errors: stderr, exit 2, nothing on stdout.
		{"no command", nil, cmdline.ExitUsage, "", []string{usageHead, "  prov-test audit verify --log FILE", "Exit status: 3 refused, 7 broken.", "Run prov-test COMMAND -h for its flags."}, []string{"prov-test: usage:"}, nil},
		{"unknown command", []string{"frob", "x"}, cmdline.ExitUsage, "", []string{`prov-test: usage: unknown command "frob" (one of echo, audit, refuse, coded, misuse, break, quiet)` + "\n" + usageHead}, nil, nil},
		{"a group without its command", []string{"audit"}, cmdline.ExitUsage, "", []string{"prov-test audit: usage: no command (one of verify, list)\n" + usageHead, "Run prov-test audit COMMAND -h"}, nil, nil},
		{"nested unknown command", []string{"audit", "frob"}, cmdline.ExitUsage, "", []string{`prov-test audit: usage: unknown audit command "frob" (one of verify, list)`, usageHead}, nil, nil},
		{"a missing flag", []string{"audit", "verify"}, cmdline.ExitUsage, "", []string{"prov-test audit verify: usage: --log is required\nusage: prov-test audit verify --log FILE\nRun prov-test audit verify -h for help.\n"}, []string{usageHead}, nil},
		{"an unknown flag", []string{"audit", "verify", "--frob"}, cmdline.ExitUsage, "", []string{"prov-test audit verify: usage: flag provided but not defined: -frob\nusage: prov-test audit verify --log FILE\n"}, []string{"-log string"}, nil},
		{"a flag without its value", []string{"audit", "verify", "--log"}, cmdline.ExitUsage, "", []string{"prov-test audit verify: usage: flag needs an argument: -log\n"}, nil, nil},
		{"a stray argument", []string{"audit", "verify", "--log", "f", "x"}, cmdline.ExitUsage, "", []string{`prov-test audit verify: usage: unexpected argument "x"`}, nil, nil},
		// Running.
		{"a command", []string{"echo", "a", "b"}, cmdline.ExitOK, "prov-test echo: a b", nil, []string{"usage"}, nil},
		{"a nested command", []string{"audit", "list", "--log", "f"}, cmdline.ExitOK, "prov-test audit list: --log f", nil, nil, nil},
		{"an error the program gives a code", []string{"refuse"}, 3, "", []string{"prov-test refuse: check bundle: refused\n"}, []string{"usage"}, nil},
		{"an error carrying its code", []string{"coded"}, 7, "", []string{"prov-test coded: read: chain broken\n"}, []string{"usage"}, nil},
		{"a usage error before any code", []string{"misuse"}, cmdline.ExitUsage, "", []string{"prov-test misuse: usage: bad --x: refused\nusage: prov-test misuse\n"}, nil, nil},
		{"any other error", []string{"break"}, cmdline.ExitError, "", []string{"prov-test break: disk full\n"}, []string{"usage"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ran []string
			var out, errb bytes.Buffer
			code := testProgram(&ran).Main(context.Background(), tc.args, &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			if got := strings.Join(ran, "; "); got != tc.ran {
				t.Errorf("ran %q, want %q", got, tc.ran)
			}
			for _, w := range tc.want {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr lacks %q", w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(errb.String(), n) {
					t.Errorf("stderr has %q", n)
				}
			}
			if code == cmdline.ExitUsage && errb.Len() == 0 {
				t.Errorf("a usage error said nothing on stderr")
			}
			for _, w := range tc.out {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q", w)
				}
			}
			if len(tc.out) == 0 && out.Len() != 0 {
				t.Errorf("stdout: %q", out.String())
			}
			if t.Failed() {
				t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
			}
		})
	}
}

// A command that parses its own sub-commands (prov-core admin) finds them
// with Find, after flags that may stand anywhere.
func TestFindAfterInterleavedFlags(t *testing.T) {
	var got string
	sub := []cmdline.Command{
		{Name: "show", Args: "SERIAL", Run: func(_ context.Context, _ *cmdline.Env, args []string) error {
			got = strings.Join(args, " ")
			return nil
		}},
		{Name: "list"},
	}
	var stdout, stderr bytes.Buffer
	for _, tc := range []struct {
		args []string
		json bool
		rest string
		err  string
	}{
		{[]string{"--core", "u", "show", "1a2b3c4d5e"}, false, "1a2b3c4d5e", ""},
		{[]string{"show", "1a2b3c4d5e", "--json", "--core", "u"}, true, "1a2b3c4d5e", ""},
		{[]string{"show", "--json", "a", "--core", "u", "b"}, true, "a b", ""},
		{[]string{"--core", "u"}, false, "", "usage: no command (one of show, list)"},
		{[]string{"--core", "u", "frob"}, false, "", `usage: unknown admin command "frob" (one of show, list)`},
		{[]string{"--core", "u", "help"}, false, "", "help"},
		{[]string{"--core", "u", "show", "-h"}, false, "", "help"},
		{[]string{"show", "--frob"}, false, "", "usage: flag provided but not defined: -frob"},
	} {
		got = ""
		fs := cmdline.NewFlags("prov-test", "admin", &stdout, &stderr)
		core := fs.String("core", "", "")
		asJSON := fs.Bool("json", false, "")
		positional, err := cmdline.ParseInterleaved(fs, tc.args)
		var cmd *cmdline.Command
		if err == nil {
			cmd, _, positional, err = cmdline.Find("admin", sub, positional)
		}
		if err == nil {
			err = cmd.Run(context.Background(), nil, positional)
		}
		switch {
		case tc.err == "help":
			if !errors.Is(err, flag.ErrHelp) {
				t.Errorf("%q: error %v, want flag.ErrHelp", tc.args, err)
			}
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.rest || *asJSON != tc.json || *core != "u"):
			t.Errorf("%q: %v: ran with %q, --json %v, --core %q", tc.args, err, got, *asJSON, *core)
		}
	}
}

func TestWriteCommands(t *testing.T) {
	var b bytes.Buffer
	cmdline.WriteCommands(&b, "prog ", []cmdline.Command{
		{Name: "run", Args: "[--state DIR]", Short: "the daemon"},
		{Name: "image", Sub: []cmdline.Command{
			{Name: "build", Args: "--record FILE --signer-cert FILE --signer-key FILE --out FILE", Short: "build an image and sign it"},
		}},
		{Name: "status", Args: "[--json]", Short: "serial, certificate, generation, mount, last check, last update, last error and more"},
		{Name: "explain", Short: strings.Repeat("word ", 30)},
	})
	want := `  prog run         [--state DIR]  the daemon
  prog image build --record FILE --signer-cert FILE --signer-key FILE --out FILE
                   build an image and sign it
  prog status      [--json]
                   serial, certificate, generation, mount, last check, last update, last
                   error and more
  prog explain
                   word word word word word word word word word word word word word word
                   word word word word word word word word word word word word word word
                   word word
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestServe(t *testing.T) {
	t.Setenv("GOGC", "100") // leave this process's collector alone
	type config struct{ level, name string }
	load := func(path string) (*config, error) {
		if path == "missing.yaml" {
			return nil, errors.New("config missing.yaml: no such file")
		}
		return &config{level: strings.TrimSuffix(path, ".yaml"), name: path}, nil
	}
	var served *config
	var runErr error
	serve := cmdline.Serve(load, func(c *config) string { return c.level }, func(ctx context.Context, c *config, log *slog.Logger) error {
		served = c
		log.Debug("debug line")
		log.Info("served", "config", c.name)
		return runErr
	})
	p := &cmdline.Program{Name: "prov-test", Commands: []cmdline.Command{{Name: "serve", Args: "--config FILE", Run: serve}}}
	for _, tc := range []struct {
		name   string
		args   []string
		runErr error
		code   int
		want   string
	}{
		{"info", []string{"--config", "info.yaml"}, nil, cmdline.ExitOK, `"msg":"served","config":"info.yaml"`},
		{"debug", []string{"--config", "debug.yaml"}, nil, cmdline.ExitOK, `"msg":"debug line"`},
		{"no config", nil, nil, cmdline.ExitUsage, "prov-test serve: usage: --config is required\nusage: prov-test serve --config FILE"},
		{"a config that does not load", []string{"--config", "missing.yaml"}, nil, cmdline.ExitError, "prov-test serve: config missing.yaml: no such file"},
		{"a bad level", []string{"--config", "loud.yaml"}, nil, cmdline.ExitError, `prov-test serve: log.level: slog: level string "loud": unknown name`},
		{"the service fails", []string{"--config", "info.yaml"}, errors.New("listen: address in use"), cmdline.ExitError, "prov-test serve: listen: address in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			served, runErr = nil, tc.runErr
			var out, errb bytes.Buffer
			code := p.Main(context.Background(), append([]string{"serve"}, tc.args...), &out, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d (want %d), stderr lacks %q:\n%s", code, tc.code, tc.want, errb.String())
			}
			if ran := served != nil; ran != (len(tc.args) == 2 && tc.args[1] != "missing.yaml" && tc.args[1] != "loud.yaml") {
				t.Fatalf("ran the service: %v", ran)
			}
			if tc.name == "info" && strings.Contains(errb.String(), "debug line") {
				t.Fatalf("a debug line at level info:\n%s", errb.String())
			}
		})
	}
}

// Walk reaches every command that runs, a group's by their full words,
// and those a command selects itself (Own), in the table's order.
func TestWalk(t *testing.T) {
	var ran []string
	p := testProgram(&ran)
	p.Commands = append(p.Commands, cmdline.Command{Name: "admin", Run: func(context.Context, *cmdline.Env, []string) error { return nil },
		Own: []cmdline.Command{{Name: "list"}, {Name: "show"}}})
	var got []string
	p.Walk(func(words []string, _ *cmdline.Command) { got = append(got, strings.Join(words, " ")) })
	want := "echo; audit verify; audit list; refuse; coded; misuse; break; quiet; admin; admin list; admin show"
	if strings.Join(got, "; ") != want {
		t.Errorf("walked %q, want %q", strings.Join(got, "; "), want)
	}
}
