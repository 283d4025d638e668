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
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/pki"
)

const adminUsage = `usage: prov-core admin --core URL --identity DIR COMMAND [--json]

  list                                 all devices
  show SERIAL                          one device
  set SERIAL PATH=VALUE... [--unset PATH]... [--from PATH=FILE]...
                                       change a device's own mutable data (a new generation)
  set-group GROUP PATH=VALUE... [--unset PATH]... [--from PATH=FILE]...
                                       change a group's data (every member gets a new generation)
  reprovision SERIAL                   a new generation with the same data
  revoke SERIAL --reason TEXT          refuse the device from now on
  audit SERIAL | audit --group GROUP   the audit trail
  backup --out FILE                    a consistent copy of core's store, checked

--identity is an admin's directory from prov-pki (cert.pem, key.pem, root_ca.crt).
Changes name the generation they start from; if someone changed the device
meanwhile, core answers 412 and nothing changes.
`

func admin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cmdline.NewFlags("prov-core", "admin", stderr)
	fs.Usage = func() { _, _ = fmt.Fprint(stderr, adminUsage) }
	coreURL := fs.String("core", "", "core's API, https://host:port")
	identity := fs.String("identity", "", "admin identity directory (cert.pem, key.pem, root_ca.crt)")
	asJSON := fs.Bool("json", false, "print JSON")
	group := fs.String("group", "", "with audit: a group instead of a device")
	reason := fs.String("reason", "", "with revoke: why")
	outFile := fs.String("out", "", "with backup: the file to write")
	var unset, from cmdline.List
	fs.Var(&unset, "unset", "with set: a data path to remove (repeatable)")
	fs.Var(&from, "from", "with set: PATH=FILE, the content of FILE (repeatable)")
	// Flags may come before or after the command and its arguments.
	var positional []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return fmt.Errorf("%w: %w", cmdline.ErrUsage, err)
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if err := cmdline.Required([2]string{"core", *coreURL}, [2]string{"identity", *identity}); err != nil {
		return err
	}
	if len(positional) == 0 {
		return fmt.Errorf("%w: no command\n%s", cmdline.ErrUsage, adminUsage)
	}
	client, err := adminClient(*coreURL, *identity)
	if err != nil {
		return err
	}
	out := printer{w: stdout, json: *asJSON}
	cmd, argv := positional[0], positional[1:]
	need := func(n int, what string) error {
		if len(argv) < n {
			return fmt.Errorf("%w: %s needs %s", cmdline.ErrUsage, cmd, what)
		}
		return nil
	}
	switch cmd {
	case "list":
		var all []coreapi.Device
		after := ""
		for {
			page, err := client.List(ctx, after, 1000)
			if err != nil {
				return err
			}
			all = append(all, page.Devices...)
			if page.Next == "" {
				break
			}
			after = page.Next
		}
		return out.devices(all)
	case "show":
		if err := need(1, "a serial"); err != nil {
			return err
		}
		d, err := client.Device(ctx, argv[0])
		if err != nil {
			return err
		}
		return out.device(d)
	case "set", "set-group":
		if err := need(1, "a serial or group"); err != nil {
			return err
		}
		ch, err := change(argv[1:], unset, from)
		if err != nil {
			return err
		}
		if cmd == "set" {
			d, err := client.Device(ctx, argv[0])
			if err != nil {
				return err
			}
			d, err = client.SetDeviceData(ctx, argv[0], d.Generation, ch)
			if err != nil {
				return err
			}
			return out.device(d)
		}
		g, err := client.Group(ctx, argv[0])
		if err != nil {
			return err
		}
		g, err = client.SetGroupData(ctx, argv[0], g.Version, ch)
		if err != nil {
			return err
		}
		return out.value(g, fmt.Sprintf("group %s is at version %d; every member moves to a new generation\n", g.Name, g.Version))
	case "reprovision":
		if err := need(1, "a serial"); err != nil {
			return err
		}
		d, err := client.Reprovision(ctx, argv[0])
		if err != nil {
			return err
		}
		return out.device(d)
	case "revoke":
		if err := need(1, "a serial"); err != nil {
			return err
		}
		if *reason == "" {
			return fmt.Errorf("%w: revoke needs --reason", cmdline.ErrUsage)
		}
		d, err := client.Revoke(ctx, argv[0], *reason)
		if err != nil {
			return err
		}
		return out.device(d)
	case "audit":
		var ev []coreapi.Event
		var err error
		switch {
		case *group != "":
			ev, err = client.GroupAudit(ctx, *group, 0)
		case len(argv) == 1:
			ev, err = client.DeviceAudit(ctx, argv[0], 0)
		default:
			return fmt.Errorf("%w: audit needs a serial or --group", cmdline.ErrUsage)
		}
		if err != nil {
			return err
		}
		return out.events(ev)
	case "backup":
		if *outFile == "" {
			return fmt.Errorf("%w: backup needs --out FILE", cmdline.ErrUsage)
		}
		return backup(ctx, client, *outFile, stdout)
	default:
		return fmt.Errorf("%w: unknown admin command %q\n%s", cmdline.ErrUsage, cmd, adminUsage)
	}
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
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.Serial, d.Board, d.Group, d.Generation, d.Status, d.Hostname, created)
	}
	return tw.Flush()
}

func (p printer) device(d *coreapi.Device) error {
	if p.json {
		return p.value(d, "")
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	for _, kv := range [][2]string{{"serial", d.Serial}, {"board", d.Board}, {"group", d.Group}, {"generation", fmt.Sprint(d.Generation)},
		{"status", string(d.Status)}, {"issued", d.IssuedAt.UTC().Format(time.RFC3339)}, {"hostname", d.Hostname}, {"mqtt client id", d.MQTTClientID},
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
	for _, c := range d.Certificates {
		_, _ = fmt.Fprintf(tw, "certificate\tserial %s, until %s\n", c.Serial, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
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

// backup writes core's store to path: a temporary file beside it, fsync,
// then rename, so path is either the old file or a complete copy (its
// length is checked against core's; TLS guards its bytes).
func backup(ctx context.Context, client *coreapi.Client, path string, stdout io.Writer) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	info, err := client.Backup(ctx, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(stdout, "backup %s: %d bytes, %d devices, %d groups\n", path, info.Size, info.Devices, info.Groups)
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir) //nolint:gosec // the operator's directory
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	return f.Sync()
}
