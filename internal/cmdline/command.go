package cmdline

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Command is one entry of a program's sub-command table: a command that
// runs (Run), or a group whose words select a command of Sub, as in
// "prov-proxy audit verify". Name, Args and Short are also the usage text.
type Command struct {
	Name  string // the word that selects it
	Args  string // its flags and arguments, as the usage shows them
	Short string // what it does, a sentence without a full stop
	Run   func(ctx context.Context, env *Env, args []string) error
	Sub   []Command
	// Own are the commands Run selects itself among its arguments, after
	// flags they share (prov-core admin's): listed so that Walk, and the
	// tests that walk every command, reach them too.
	Own []Command
}

// Env is what a command runs with: where it writes, and its own name for
// its flag set and messages.
type Env struct {
	Stdout, Stderr io.Writer
	prog, path     string // "prov-core", "image build"
	cmd            *Command
}

// Name is the command's full name, "prov-core image build".
func (e *Env) Name() string { return e.prog + " " + e.path }

// Flags makes the command's flag set: named for the command, returning
// errors (Parse makes them usage errors, reported on Stderr), printing its
// help (the command's synopsis, what it does, its flags) on Stdout.
func (e *Env) Flags() *flag.FlagSet {
	cmd := e.cmd
	if cmd == nil {
		cmd = &Command{Name: e.path}
	}
	return newFlags(cmd, e.Name(), e.Stdout, e.Stderr)
}

// ExitCode maps the errors of one program that have an exit code of their
// own (matched with errors.Is) to that code.
type ExitCode struct {
	Code int
	Is   []error
}

// Program is one binary's command line: its table, usage text and exit
// codes.
type Program struct {
	Name     string // "prov-core"
	Summary  string // what the binary is, the usage text's first line
	Commands []Command
	Footer   string // said after the command list (exit statuses, say)
	// Codes are tried in order on an error that is not a usage error and
	// carries no code of its own (WithExitCode); otherwise ExitError.
	Codes []ExitCode
}

// Main runs the command args name (without the program name) and returns
// the exit code. Help asked for (-h, --help or help where a command's name
// belongs, -h or --help among a command's flags) is printed on stdout and
// exits ExitOK: it is the output asked for. A usage error (no command, an
// unknown one, a bad flag or argument) is said on stderr with the usage
// and exits ExitUsage.
func (p *Program) Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		p.Usage(stderr)
		return ExitUsage
	}
	cmd, path, rest, err := Find("", p.Commands, args)
	if errors.Is(err, flag.ErrHelp) {
		p.usage(stdout, path)
		return ExitOK
	}
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "%s: %v\n", strings.TrimSpace(p.Name+" "+path), err)
		p.usage(stderr, path)
		return ExitUsage
	}
	env := &Env{Stdout: stdout, Stderr: stderr, prog: p.Name, path: path, cmd: cmd}
	return p.exit(env, cmd, cmd.Run(ctx, env, rest))
}

// exit prints err as "<prog> <command>: <err>" and returns its exit code:
// 0 for nil and for help (flag.ErrHelp: the help is printed); ExitUsage
// for a usage error, which is followed by the command's usage line; the
// code the error carries or the program gives it; ExitError otherwise.
func (p *Program) exit(env *Env, cmd *Command, err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	}
	_, _ = fmt.Fprintf(env.Stderr, "%s: %v\n", env.Name(), err)
	if errors.Is(err, ErrUsage) {
		_, _ = fmt.Fprintf(env.Stderr, "usage: %s\nRun %s -h for help.\n", strings.TrimSpace(env.Name()+" "+cmd.Args), env.Name())
		return ExitUsage
	}
	var coded *exitCodeError
	if errors.As(err, &coded) {
		return coded.code
	}
	for _, c := range p.Codes {
		for _, target := range c.Is {
			if errors.Is(err, target) {
				return c.Code
			}
		}
	}
	return ExitError
}

// Find selects the command that args' leading words name in cmds,
// descending into groups, and returns it, its path (within, then the
// words: "admin list") and the arguments left for it. A help word where a
// command's name belongs is flag.ErrHelp; a missing or unknown name is a
// usage error that lists the names there are.
func Find(within string, cmds []Command, args []string) (cmd *Command, path string, rest []string, err error) {
	path = within
	for {
		if len(args) == 0 {
			return nil, path, nil, fmt.Errorf("%w: no command (one of %s)", ErrUsage, names(cmds))
		}
		if isHelp(args[0]) {
			return nil, path, nil, flag.ErrHelp
		}
		cmd = lookup(cmds, args[0])
		if cmd == nil {
			return nil, path, nil, fmt.Errorf("%w: unknown %scommand %q (one of %s)", ErrUsage, suffixed(path), args[0], names(cmds))
		}
		path, args = strings.TrimSpace(path+" "+cmd.Name), args[1:]
		if cmd.Sub == nil {
			return cmd, path, args, nil
		}
		cmds = cmd.Sub
	}
}

func lookup(cmds []Command, name string) *Command {
	for i := range cmds {
		if cmds[i].Name == name {
			return &cmds[i]
		}
	}
	return nil
}

func isHelp(word string) bool {
	switch word {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

func names(cmds []Command) string {
	n := make([]string, len(cmds))
	for i, c := range cmds {
		n[i] = c.Name
	}
	return strings.Join(n, ", ")
}

// suffixed is s and a space, or nothing for an empty s.
func suffixed(s string) string {
	if s == "" {
		return ""
	}
	return s + " "
}

// Usage writes the program's usage text: its summary, every command with
// its arguments and what it does, the footer.
func (p *Program) Usage(w io.Writer) { p.usage(w, "") }

// usage is Usage for the commands of the group path names ("audit"), or
// of the whole program for "" (or a path that is not a group).
func (p *Program) usage(w io.Writer, path string) {
	cmds, prefix := p.Commands, p.Name+" "
	if path != "" {
		if sub := group(p.Commands, strings.Fields(path)); sub != nil {
			cmds, prefix = sub, prefix+path+" "
		}
	}
	_, _ = fmt.Fprintf(w, "%s: %s\n\nusage:\n", p.Name, p.Summary)
	WriteCommands(w, prefix, cmds)
	if p.Footer != "" {
		_, _ = fmt.Fprintf(w, "\n%s\n", strings.TrimSuffix(p.Footer, "\n"))
	}
	_, _ = fmt.Fprintf(w, "\nRun %sCOMMAND -h for its flags.\n", prefix)
}

// group is the commands of the group that words name in cmds, or nil.
func group(cmds []Command, words []string) []Command {
	for _, w := range words {
		c := lookup(cmds, w)
		if c == nil || c.Sub == nil {
			return nil
		}
		cmds = c.Sub
	}
	return cmds
}

// Walk calls fn with the words and the entry of every command that runs
// (a group's by their full words, "audit verify"), followed by those it
// selects itself (Command.Own: "admin list"), in the table's order: what a
// test needs to try every command there is.
func (p *Program) Walk(fn func(words []string, cmd *Command)) {
	var walk func(within []string, cmds []Command)
	walk = func(within []string, cmds []Command) {
		for i := range cmds {
			c := &cmds[i]
			words := append(append([]string(nil), within...), c.Name)
			if c.Sub != nil {
				walk(words, c.Sub)
				continue
			}
			fn(words, c)
			walk(words, c.Own)
		}
	}
	walk(nil, p.Commands)
}

// The layout of a command list: what a command does stands beside its
// synopsis, in one column for all, when both fit on the line; else it
// goes on the next line, where the arguments start. Synopses longer than
// maxColumn-2 do not widen the column; lines wrap at lineWidth.
const (
	maxColumn = 44
	lineWidth = 90
)

// WriteCommands writes cmds as a usage list, one synopsis a line (prefix,
// the command's words, its arguments) with what it does beside or below
// it; a group's commands are listed by their full words.
func WriteCommands(w io.Writer, prefix string, cmds []Command) {
	type entry struct{ head, synopsis, short string }
	var entries []entry
	var walk func(within string, cmds []Command)
	walk = func(within string, cmds []Command) {
		for _, c := range cmds {
			if c.Sub != nil {
				walk(within+c.Name+" ", c.Sub)
				continue
			}
			entries = append(entries, entry{head: within + c.Name, synopsis: c.Args, short: c.Short})
		}
	}
	walk("", cmds)
	width := 0
	for _, e := range entries {
		width = max(width, len(e.head))
	}
	column := 0
	for i, e := range entries {
		entries[i].head = fmt.Sprintf("  %s%-*s ", prefix, width, e.head)
		entries[i].synopsis = strings.TrimRight(entries[i].head+e.synopsis, " ")
		if n := len(entries[i].synopsis) + 2; n <= maxColumn {
			column = max(column, n)
		}
	}
	for _, e := range entries {
		indent := column
		if len(e.synopsis)+2 <= column && column+len(e.short) <= lineWidth {
			_, _ = fmt.Fprintf(w, "%-*s", column, e.synopsis)
		} else {
			_, _ = fmt.Fprintf(w, "%s\n%*s", e.synopsis, len(e.head), "")
			indent = len(e.head)
		}
		for i, line := range wrap(e.short, lineWidth-indent) {
			if i > 0 {
				_, _ = fmt.Fprintf(w, "%*s", indent, "")
			}
			_, _ = fmt.Fprintln(w, line)
		}
	}
}

// wrap breaks text into lines of at most width bytes at spaces (a longer
// word gets a line of its own).
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) <= width:
			line += " " + word
		default:
			lines = append(lines, line)
			line = word
		}
	}
	return append(lines, line)
}
