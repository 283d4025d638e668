package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/atomicfile"
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/pki"
)

// adminArgs is what every admin command starts with; its flags may also
// come after the command and its arguments.
const adminArgs = "--core URL --identity DIR COMMAND [--json]"

const adminNote = `--identity is an admin's directory from prov-pki (cert.pem, key.pem, root_ca.crt).
Changes name the generation they start from; if someone changed the device
meanwhile, core answers 412 and nothing changes.
`

// admin is one run of prov-core admin: the flags its commands share, the
// client of core's API they use and how they print.
type admin struct {
	coreURL, identity      string
	group, reason, outFile string
	before                 string
	unset, from            cmdline.List
	rollout                rolloutFlags
	client                 *coreapi.Client
	out                    printer
}

// commands is the admin's command table, its commands bound to a.
func (a *admin) commands() []cmdline.Command {
	const change = "PATH=VALUE... [--unset PATH]... [--from PATH=FILE]..."
	return []cmdline.Command{
		{Name: "list", Short: "all devices", Run: a.list},
		{Name: "show", Args: "SERIAL", Short: "one device, with its latest report", Run: a.show},
		{Name: "device", Short: "one device", Sub: []cmdline.Command{{Name: "show", Args: "SERIAL", Short: "one device, with its latest report (as show)", Run: a.show}}},
		{Name: "fleet", Args: "--group GROUP [--stale-after D]", Short: "what a group's members run, from their reports", Run: a.fleet},
		{Name: "rollout", Short: "staged changes of a group's data", Sub: a.rolloutCommands()},
		{Name: "set", Args: "SERIAL " + change, Short: "change a device's own mutable data (a new generation)", Run: a.set},
		{Name: "set-group", Args: "GROUP " + change, Short: "change a group's data (every member gets a new generation)", Run: a.setGroup},
		{Name: "reprovision", Args: "SERIAL", Short: "a new generation with the same data", Run: a.reprovision},
		{Name: "revoke", Args: "SERIAL --reason TEXT", Short: "refuse the device from now on, at core and at step-ca", Run: a.revoke},
		{Name: "audit", Args: "SERIAL | audit --group GROUP | audit prune --before DATE", Short: "the audit trail; prune removes old events, leaving a summary", Run: a.audit, Own: a.auditCommands()},
		{Name: "backup", Args: "--out FILE", Short: "a consistent copy of core's store, checked", Run: a.backup},
	}
}

// writeAdminUsage is admin -h: the synopsis, the command table (from an
// unbound admin) and the note.
func writeAdminUsage(w io.Writer, name string) {
	_, _ = fmt.Fprintf(w, "usage: %s %s\n\n", name, adminArgs)
	cmdline.WriteCommands(w, "", new(admin).commands())
	_, _ = fmt.Fprint(w, "\n"+adminNote)
}

// runAdmin parses the shared flags wherever they are, finds the command,
// connects to core and runs it.
func runAdmin(ctx context.Context, env *cmdline.Env, args []string) error {
	a := &admin{out: printer{w: env.Stdout}}
	fs := env.Flags()
	fs.Usage = func() {
		writeAdminUsage(env.Stdout, env.Name())
		cmdline.WriteFlags(env.Stdout, fs)
	}
	fs.StringVar(&a.coreURL, "core", "", "core's API, https://host:port")
	fs.StringVar(&a.identity, "identity", "", "admin identity directory (cert.pem, key.pem, root_ca.crt)")
	fs.BoolVar(&a.out.json, "json", false, "print JSON")
	fs.StringVar(&a.group, "group", "", "with audit: a group instead of a device; with fleet: the group")
	fs.Var(&a.rollout.canary, "canary", "with rollout start: a board of the first wave (repeatable)")
	fs.Var(&a.rollout.percent, "percent", "with rollout start: a wave up to this percentage of the other members (repeatable, growing)")
	fs.Var(&a.rollout.sizes, "sizes", "with rollout start: a wave of this many more members (repeatable)")
	fs.Float64Var(&a.rollout.minHealthy, "min-healthy", 0, "with rollout start: percent of a wave healthy before the next (default 100)")
	fs.Float64Var(&a.rollout.maxFailed, "max-failed", 0, "with rollout start: percent of a wave that may fail before it pauses (default 0)")
	fs.DurationVar(&a.rollout.waveTimeout, "wave-timeout", 0, "with rollout start: pause when a wave is not healthy enough by then (default 30m)")
	fs.DurationVar(&a.rollout.stale, "stale-after", 0, "with fleet: a device without a report for this long is stale (default 26h)")
	fs.StringVar(&a.reason, "reason", "", "with revoke (required) and rollout actions: why")
	fs.StringVar(&a.outFile, "out", "", "with backup: the file to write")
	fs.StringVar(&a.before, "before", "", "with audit prune: the date (2006-01-02, UTC, or RFC 3339) before which events are pruned")
	fs.Var(&a.unset, "unset", "with set: a data path to remove (repeatable)")
	fs.Var(&a.from, "from", "with set: PATH=FILE, the content of FILE (repeatable)")
	positional, err := cmdline.ParseInterleaved(fs, args)
	if err != nil {
		return err
	}
	// The command first: "admin help" needs no --core, and an unknown
	// command is the first thing to say.
	cmd, _, argv, err := cmdline.Find("admin", a.commands(), positional)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
	}
	if err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"core", a.coreURL}, [2]string{"identity", a.identity}); err != nil {
		return err
	}
	if a.client, err = adminClient(a.coreURL, a.identity); err != nil {
		return err
	}
	return cmd.Run(ctx, env, argv)
}

// need is a usage error unless cmd has at least n arguments.
func need(args []string, n int, cmd, what string) error {
	if len(args) < n {
		return fmt.Errorf("%w: %s needs %s", cmdline.ErrUsage, cmd, what)
	}
	return nil
}

func (a *admin) list(ctx context.Context, _ *cmdline.Env, _ []string) error {
	var all []coreapi.Device
	after := ""
	for {
		page, err := a.client.List(ctx, after, 1000)
		if err != nil {
			return err
		}
		all = append(all, page.Devices...)
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	return a.out.devices(all)
}

func (a *admin) show(ctx context.Context, _ *cmdline.Env, args []string) error {
	if err := need(args, 1, "show", "a serial"); err != nil {
		return err
	}
	d, err := a.client.Device(ctx, args[0])
	if err != nil {
		return err
	}
	return a.out.device(d)
}

func (a *admin) set(ctx context.Context, _ *cmdline.Env, args []string) error {
	ch, err := a.change("set", args)
	if err != nil {
		return err
	}
	d, err := a.client.Device(ctx, args[0])
	if err != nil {
		return err
	}
	d, err = a.client.SetDeviceData(ctx, args[0], d.Generation, ch)
	if err != nil {
		return err
	}
	return a.out.device(d)
}

func (a *admin) setGroup(ctx context.Context, _ *cmdline.Env, args []string) error {
	ch, err := a.change("set-group", args)
	if err != nil {
		return err
	}
	g, err := a.client.Group(ctx, args[0])
	if err != nil {
		return err
	}
	g, err = a.client.SetGroupData(ctx, args[0], g.Version, ch)
	if err != nil {
		return err
	}
	return a.out.value(g, fmt.Sprintf("group %s is at version %d; every member moves to a new generation\n", g.Name, g.Version))
}

// change is the change set and set-group make: args are the serial or
// group, then PATH=VALUE assignments; --unset and --from add to them.
func (a *admin) change(cmd string, args []string) (coreapi.DataChange, error) {
	if err := need(args, 1, cmd, "a serial or group"); err != nil {
		return coreapi.DataChange{}, err
	}
	return change(args[1:], a.unset, a.from)
}

func (a *admin) reprovision(ctx context.Context, _ *cmdline.Env, args []string) error {
	if err := need(args, 1, "reprovision", "a serial"); err != nil {
		return err
	}
	d, err := a.client.Reprovision(ctx, args[0])
	if err != nil {
		return err
	}
	return a.out.device(d)
}

func (a *admin) revoke(ctx context.Context, _ *cmdline.Env, args []string) error {
	if err := need(args, 1, "revoke", "a serial"); err != nil {
		return err
	}
	if a.reason == "" {
		return fmt.Errorf("%w: revoke needs --reason", cmdline.ErrUsage)
	}
	d, err := a.client.Revoke(ctx, args[0], a.reason)
	if err != nil {
		return err
	}
	return a.out.device(d)
}

func (a *admin) audit(ctx context.Context, env *cmdline.Env, args []string) error {
	if cmd := lookupOwn(a.auditCommands(), args); cmd != nil {
		return cmd.Run(ctx, env, args[1:])
	}
	var ev []coreapi.Event
	var err error
	switch {
	case a.group != "":
		ev, err = a.client.GroupAudit(ctx, a.group, 0)
	case len(args) == 1:
		ev, err = a.client.DeviceAudit(ctx, args[0], 0)
	default:
		return fmt.Errorf("%w: audit needs a serial or --group", cmdline.ErrUsage)
	}
	if err != nil {
		return err
	}
	return a.out.events(ev)
}

func (a *admin) backup(ctx context.Context, env *cmdline.Env, _ []string) error {
	if a.outFile == "" {
		return fmt.Errorf("%w: backup needs --out FILE", cmdline.ErrUsage)
	}
	return writeBackup(ctx, a.client, a.outFile, env.Stdout)
}

func adminClient(coreURL, dir string) (*coreapi.Client, error) {
	u, err := url.Parse(coreURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: --core %q: want https://host:port", cmdline.ErrUsage, coreURL)
	}
	kp, err := pki.LoadKeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("--identity: %w", err)
	}
	bundle, err := pki.LoadTrustBundle(filepath.Join(dir, "root_ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("--identity: %w", err)
	}
	if id, err := bundle.Verify(kp.Chain(), pki.VerifyOptions{KeyUsage: pki.RoleAdmin.ExtKeyUsage(), Roles: []pki.Role{pki.RoleAdmin}}); err != nil {
		return nil, fmt.Errorf("--identity: not an admin certificate of this deployment: %w", err)
	} else if id.IsZero() {
		return nil, errors.New("--identity: no identity")
	}
	tlsCfg := pki.ClientTLSConfig(kp, bundle, pki.ClientOptions{ServerName: u.Hostname(), ServerRoles: []pki.Role{pki.RoleCore}})
	return coreapi.NewClient(coreURL, &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}})
}

// change reads PATH=VALUE arguments, --unset paths and --from PATH=FILE.
func change(assignments, unset, from []string) (coreapi.DataChange, error) {
	ch := coreapi.DataChange{Set: map[string]string{}, Unset: unset}
	for _, a := range assignments {
		p, v, ok := strings.Cut(a, "=")
		if !ok || p == "" {
			return ch, fmt.Errorf("%w: %q is not PATH=VALUE", cmdline.ErrUsage, a)
		}
		ch.Set[p] = v
	}
	for _, f := range from {
		p, file, ok := strings.Cut(f, "=")
		if !ok || p == "" || file == "" {
			return ch, fmt.Errorf("%w: --from %q is not PATH=FILE", cmdline.ErrUsage, f)
		}
		data, err := os.ReadFile(file) //nolint:gosec // the admin names it
		if err != nil {
			return ch, fmt.Errorf("--from %s: %w", p, err)
		}
		ch.Set[p] = string(data)
	}
	if len(ch.Set) == 0 && len(ch.Unset) == 0 {
		return ch, fmt.Errorf("%w: nothing to change", cmdline.ErrUsage)
	}
	return ch, nil
}

type printer struct {
	w    io.Writer
	json bool
}

func (p printer) value(v any, text string) error {
	if p.json {
		enc := json.NewEncoder(p.w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	_, err := io.WriteString(p.w, text)
	return err
}

func (p printer) devices(ds []coreapi.Device) error {
	if p.json {
		return p.value(ds, "")
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "SERIAL\tBOARD\tGROUP\tGEN\tSTATUS\tHOSTNAME\tREGISTERED")
	for _, d := range ds {
		created := ""
		if d.CreatedAt != nil {
			created = d.CreatedAt.UTC().Format(time.RFC3339)
		}
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.Serial, d.Board, d.Group, d.Generation, status(&d), d.Hostname, created)
	}
	return tw.Flush()
}

func (p printer) device(d *coreapi.Device) error {
	if p.json {
		return p.value(d, "")
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	for _, kv := range [][2]string{{"serial", d.Serial}, {"board", d.Board}, {"group", d.Group}, {"generation", fmt.Sprint(d.Generation)},
		{"status", status(d)}, {"issued", d.IssuedAt.UTC().Format(time.RFC3339)}, {"hostname", d.Hostname}, {"mqtt client id", d.MQTTClientID},
		{"mqtt group id", d.MQTTGroupID}, {"topic", d.Topic}, {"registered by", d.RegisteredBy}} {
		_, _ = fmt.Fprintf(tw, "%s\t%s\n", kv[0], kv[1])
	}
	paths := make([]string, 0, len(d.Data))
	for k := range d.Data {
		paths = append(paths, k)
	}
	sort.Strings(paths)
	for _, k := range paths {
		origin := "group"
		if _, ok := d.OwnData[k]; ok {
			origin = "device"
		}
		_, _ = fmt.Fprintf(tw, "data %s\t%d bytes (%s)\n", k, len(d.Data[k]), origin)
	}
	if d.Held {
		_, _ = fmt.Fprintf(tw, "held\tby its group's rollout, at the data it had\n")
	}
	if r := d.Report; r != nil {
		_, _ = fmt.Fprintf(tw, "report\t%s at generation %d, running %d (boot %s, at %s, received %s)\n", r.State, r.Generation, r.Running, r.BootID,
			r.At.UTC().Format(time.RFC3339), r.Received.UTC().Format(time.RFC3339))
		if r.Error != "" {
			_, _ = fmt.Fprintf(tw, "report error\t%s\n", oneLine(r.Error))
		}
	} else {
		_, _ = fmt.Fprintf(tw, "report\tnone yet\n")
	}
	for _, c := range d.Issued {
		_, _ = fmt.Fprintf(tw, "issued certificate\tserial %s, until %s, by %s; key: %s\n", c.Serial, c.NotAfter.UTC().Format(time.RFC3339),
			c.IssuedBy, keyStorage(c))
	}
	for _, c := range d.Certificates {
		_, _ = fmt.Fprintf(tw, "certificate\tserial %s, until %s\n", c.Serial, c.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, p := range d.PendingCARevocations {
		line := fmt.Sprintf("serial %s, queued %s, %d attempts, next %s", p.Serial, p.Since.UTC().Format(time.RFC3339), p.Attempts,
			p.NextAttempt.UTC().Format(time.RFC3339))
		if p.LastError != "" {
			line += ", last error: " + p.LastError
		}
		_, _ = fmt.Fprintf(tw, "not yet revoked at step-ca\t%s\n", line)
	}
	return tw.Flush()
}

// keyStorage says where an issued certificate's key is: in a TPM the
// proxy attested at enrollment (named by its endorsement key, as the
// certificate's TPM key policy names it), or in software.
func keyStorage(c coreapi.IssuedCertificate) string {
	s := "software"
	if c.EKSHA256 != "" {
		s = "TPM (endorsement key sha256 " + c.EKSHA256 + ")"
	}
	if c.Replaced != nil {
		s += "; replaced by a re-enrollment " + c.Replaced.UTC().Format(time.RFC3339) + ", no longer accepted"
	}
	return s
}

// status is a device's status, with how many of its certificates step-ca
// has still to revoke.
func status(d *coreapi.Device) string {
	if n := len(d.PendingCARevocations); n > 0 {
		return fmt.Sprintf("%s (%d not yet revoked at step-ca)", d.Status, n)
	}
	return string(d.Status)
}

func (p printer) events(ev []coreapi.Event) error {
	if p.json {
		return p.value(ev, "")
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tGEN\tDETAIL")
	for _, e := range ev {
		keys := make([]string, 0, len(e.Detail))
		for k := range e.Detail {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, strings.TrimSpace(k+" "+e.Detail[k]))
		}
		_, _ = fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", e.Seq, e.At.UTC().Format(time.RFC3339), e.Actor, e.Action, e.Generation, strings.Join(parts, "; "))
	}
	return tw.Flush()
}

// writeBackup writes core's store to path: a temporary file beside it, fsync,
// then rename, so path is either the old file or a complete copy (its
// length is checked against core's; TLS guards its bytes).
func writeBackup(ctx context.Context, client *coreapi.Client, path string, stdout io.Writer) error {
	var info *coreapi.BackupInfo
	err := atomicfile.Write(path, 0o600, func(w io.Writer) (err error) {
		info, err = client.Backup(ctx, w)
		return err
	})
	if se := (*coreapi.StatusError)(nil); errors.As(err, &se) && se.Body.Code == coreapi.CodeNoBackup {
		return fmt.Errorf("backup: core's store is on PostgreSQL, which core does not copy: back it up with pg_dump (docs/operations.md, \"PostgreSQL\"): %w", err)
	}
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	_, _ = fmt.Fprintf(stdout, "backup %s: %d bytes, %d devices, %d groups\n", path, info.Size, info.Devices, info.Groups)
	return nil
}
