package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/enroll"
	"github.com/fleetprov/prov/deviceclient/hwinfo"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/internal/buildinfo"
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/pki"
)

// common are the flags of the device commands.
type common struct {
	state, runDir, target string
	tpm                   string
	allow                 cmdline.List
	hw                    hwinfo.Sources
	fs                    *flag.FlagSet
	log                   *slog.Logger // warnings; run logs everything
	// the health check (withHealth)
	healthCheck, healthFile string
	healthTimeout           time.Duration
	healthAttempts          int
}

// DefaultHealthCheckFile is where a device's own health check is
// configured on its rootfs (docs/device.md): one command line, a JSON
// array of strings or words. Missing: none (unless the image names one).
const DefaultHealthCheckFile = "/usr/lib/prov-device/health-check"

// bootIDFile is the kernel's boot ID; a test seam (export_test.go).
var bootIDFile = "/proc/sys/kernel/random/boot_id"

// withHealth adds the health check's flags.
func (c *common) withHealth() {
	c.fs.StringVar(&c.healthCheck, "health-check", "", "the health check run after a new generation is mounted: a command line (words, or a JSON array of strings), run without a shell; overrides --health-check-file; the image's "+agent.ImageHealthCheck+" overrides both")
	c.fs.StringVar(&c.healthFile, "health-check-file", DefaultHealthCheckFile, "the file holding the device's health check, if it exists")
	c.fs.DurationVar(&c.healthTimeout, "health-timeout", 2*time.Minute, "kill the health check (its whole process group) after this long, and fail it")
	c.fs.IntVar(&c.healthAttempts, "health-attempts", 1, "how many boots a new generation may be mounted in before its check passes; a restart past them fails it")
}

// health is the health check's configuration.
func (c *common) health() (agent.Health, error) {
	h := agent.Health{Timeout: c.healthTimeout, Attempts: c.healthAttempts, BootID: func() (string, error) {
		b, err := os.ReadFile(bootIDFile)
		if err != nil {
			return "", fmt.Errorf("boot ID: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}}
	if c.healthTimeout <= 0 || c.healthAttempts < 1 {
		return h, fmt.Errorf("%w: --health-timeout must be positive and --health-attempts at least 1", cmdline.ErrUsage)
	}
	line := c.healthCheck
	if line == "" && c.healthFile != "" {
		b, err := os.ReadFile(c.healthFile)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return h, fmt.Errorf("--health-check-file: %w", err)
		}
		line = string(b)
	}
	argv, err := agent.ParseCommand(line)
	if err != nil {
		return h, fmt.Errorf("%w: --health-check: %w", cmdline.ErrUsage, err)
	}
	h.Command = argv
	return h, nil
}

func newCommon(env *cmdline.Env, withHW, withMount bool) *common {
	c := &common{fs: env.Flags(), log: slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	c.fs.StringVar(&c.state, "state", "/var/lib/prov-device", "the state directory (key, certificate, images)")
	c.fs.Var(&c.allow, "allow-prefix", "a directory below /etc/ where data files may be (repeatable; default "+imagespec.DataDir+")")
	if withHW {
		c.fs.StringVar(&c.hw.CPUInfo, "cpuinfo", "", "read the Raspberry Pi serial from this file (default /proc/cpuinfo)")
		c.fs.StringVar(&c.hw.DTRoot, "dt-root", "", "the devicetree (default /sys/firmware/devicetree/base)")
		c.fs.StringVar(&c.hw.HWID, "hwid", "", "the raw hardware ID, instead of reading it")
		c.fs.StringVar(&c.hw.Board, "board", "", "the board type (rpi4, bbb, bbai), instead of the devicetree model")
		c.fs.StringVar(&c.tpm, "tpm", "", "the TPM holding the device key (key.tpm): a device node, or unix:SOCKET for a software TPM (default: the one enroll used, "+tpmkey.DefaultPath+")")
	}
	if withMount {
		c.fs.StringVar(&c.target, "target", "/etc", "the directory the image's etc/ is mounted over")
		c.fs.StringVar(&c.runDir, "run-dir", "/run/prov-device", "where the image and overlay mounts are kept (tmpfs)")
	}
	return c
}

func (c *common) parse(args []string) error { return cmdline.Parse(c.fs, args) }

func (c *common) installOptions(st *state.Dir) install.Options {
	rules := imagespec.DefaultRules()
	if len(c.allow) > 0 {
		rules.AllowedPrefixes = c.allow
	}
	return install.Options{Rules: rules, Floor: c.clockFloor(st)}
}

// clockFloor is the device's clock floor, its build time the lowest.
func (c *common) clockFloor(st *state.Dir) *pki.Floor {
	return st.ClockFloor(buildinfo.Time(), func(err error) { c.log.Warn("clock floor", "err", err) })
}

func (c *common) layout() *mount.Layout {
	if c.target == "" {
		return nil
	}
	return &mount.Layout{Target: c.target, RunDir: c.runDir}
}

// open opens the state directory, checks that this is the board that
// enrolled, loads the agent and recovers from a crash.
func (c *common) open(o agent.Options) (*state.Dir, *agent.Agent, error) {
	o.TPM = c.tpm
	st, err := state.Open(c.state)
	if err != nil {
		return nil, nil, err
	}
	a, err := c.load(st, o)
	if err != nil {
		_ = st.Close()
		return nil, nil, err
	}
	return st, a, nil
}

func (c *common) load(st *state.Dir, o agent.Options) (*agent.Agent, error) {
	dev, err := st.Device()
	if err != nil {
		return nil, err
	}
	id, err := hwinfo.Read(c.hw)
	if err != nil {
		return nil, fmt.Errorf("reading this board's hardware ID: %w", err)
	}
	if err := dev.CheckID(id.Board, id.Canonical); err != nil {
		return nil, err
	}
	o.Install, o.Layout = c.installOptions(st), c.layout()
	if c.healthTimeout != 0 {
		if o.Health, err = c.health(); err != nil {
			return nil, err
		}
	}
	a, err := agent.New(st, o)
	if err != nil {
		return nil, err
	}
	return a, a.Recover()
}

func enrollCmd(ctx context.Context, env *cmdline.Env, args []string) error {
	c := newCommon(env, true, false)
	proxy := c.fs.String("proxy", "", "the factory proxy (https://host:port)")
	rootFile := c.fs.String("root", "/usr/share/prov/root_ca.crt", "the deployment's root certificate, as baked into the rootfs")
	force := c.fs.Bool("force", false, "enroll again although enrolled (the proxy's re-enrollment policy decides)")
	timeout := c.fs.Duration("timeout", 2*time.Minute, "give up after this long")
	key := c.fs.String("key", string(enroll.KeyFile), "where the device key is made: file (key.pem in the state directory) or tpm (in the board's TPM, --tpm; proven resident to the proxy by attestation)")
	if err := c.parse(args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"proxy", *proxy}); err != nil {
		return err
	}
	if k := enroll.KeyKind(*key); k != enroll.KeyFile && k != enroll.KeyTPM {
		return fmt.Errorf("%w: --key %q: want %s or %s", cmdline.ErrUsage, *key, enroll.KeyFile, enroll.KeyTPM)
	}
	rootPEM, err := os.ReadFile(*rootFile)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	id, err := hwinfo.Read(c.hw)
	if err != nil {
		return fmt.Errorf("reading this board's hardware ID: %w", err)
	}
	st, err := state.Open(c.state)
	if err != nil {
		return err
	}
	defer func() { _ = st.Close() }()
	dev, res, err := enroll.Enroll(ctx, st, enroll.Options{ProxyURL: *proxy, RootPEM: rootPEM, ID: id, Force: *force,
		Install: c.installOptions(st), Timeout: *timeout, Key: enroll.KeyKind(*key), TPM: c.tpm})
	if err != nil {
		return err
	}
	leaf, err := st.Leaf()
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(env.Stdout, "enrolled %s %s as %s\n  certificate until %s\n  generation  %d installed\n  core        %s\n  mqtt        %s %s\n",
		id.Board, id.Canonical, dev.Serial, leaf.NotAfter.UTC().Format(time.RFC3339), res.Generation, dev.CoreURL, dev.MQTTURL, dev.MQTTTopic)
	return nil
}

func updateCmd(ctx context.Context, env *cmdline.Env, args []string) error {
	c := newCommon(env, true, true)
	c.withHealth()
	if err := c.parse(args); err != nil {
		return err
	}
	st, a, err := c.open(agent.Options{Log: c.log})
	if err != nil {
		return err
	}
	defer func() { _, _ = a.Close(), st.Close() }()
	res, err := a.Update(ctx)
	// The report goes once; if core is away it stays pending for the
	// daemon, and the update is no less done.
	if _, rerr := a.SendReport(ctx); rerr != nil {
		c.log.Warn("report pending (the daemon sends it)", "err", rerr)
	}
	if err != nil {
		return err
	}
	switch {
	case res == nil:
		_, _ = fmt.Fprintln(env.Stdout, "up to date (core has nothing newer)")
	case !res.Changed:
		_, _ = fmt.Fprintf(env.Stdout, "up to date: generation %d\n", res.Generation)
	default:
		_, _ = fmt.Fprintf(env.Stdout, "installed generation %d (%s)\n", res.Generation, res.Name)
	}
	return nil
}

func mountCmd(ctx context.Context, env *cmdline.Env, args []string) (err error) {
	mounted := ""
	// Under systemd, the unit's status line says what happened, even where
	// the journal cannot be read (a new machine-id over /etc).
	defer func() {
		status := "STATUS=" + mounted
		if err != nil {
			status = "STATUS=" + err.Error()
		}
		_ = agent.SystemdNotify(status)
	}()
	c := newCommon(env, true, true)
	c.withHealth()
	noHostname := c.fs.Bool("no-hostname", false, "do not set the kernel's hostname from the image (it is set when --target is /etc)")
	deferCheck := c.fs.Bool("defer-check", false, "do not run the health check of a new generation: leave it on trial for the daemon (the boot-time units: the check may wait for the boot to finish)")
	if err := c.parse(args); err != nil {
		return err
	}
	// The mount needs no key: at early boot the TPM's driver may not be
	// up yet.
	st, a, err := c.open(agent.Options{Log: c.log, SkipTPMKey: true})
	if err != nil {
		return err
	}
	defer func() { _ = st.Close() }()
	rec, err := a.Mount(ctx, !*deferCheck)
	if rec == nil && err != nil {
		return err
	}
	checkErr := err
	// PID 1 set the hostname from the rootfs's /etc before any unit ran.
	if c.target == "/etc" && !*noHostname {
		if h, err := os.ReadFile("/etc/hostname"); err == nil {
			if err := unix.Sethostname(trimLine(h)); err != nil {
				return fmt.Errorf("set the hostname: %w", err)
			}
		}
	}
	mounted = fmt.Sprintf("mounted generation %d over %s", rec.Generation, rec.Target)
	_, _ = fmt.Fprintln(env.Stdout, mounted)
	if checkErr != nil {
		// The previous generation is mounted (rec), and the unit fails
		// with the reason.
		return fmt.Errorf("%w; generation %d is mounted", checkErr, rec.Generation)
	}
	if fb := a.FellBack(); fb != nil {
		// The previous image is mounted, and the unit fails with the reason:
		// a changed card is worth a look even though the device goes on.
		return fmt.Errorf("%w: %s; the daemon fetches the current one again", errRefused, fb)
	}
	return nil
}

func trimLine(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func unmountCmd(_ context.Context, env *cmdline.Env, args []string) error {
	c := newCommon(env, false, true)
	if err := c.parse(args); err != nil {
		return err
	}
	if err := mount.Unmount(*c.layout()); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(env.Stdout, "unmounted %s\n", c.target)
	return nil
}

func runCmd(ctx context.Context, env *cmdline.Env, args []string) error {
	c := newCommon(env, true, true)
	c.withHealth()
	poll := c.fs.Duration("poll", 5*time.Minute, "how often to check while MQTT is down (jittered)")
	noMount := c.fs.Bool("no-mount", false, "do not mount new images (only install them)")
	renewAt := c.fs.Float64("renew-at", 2.0/3, "renew the certificate after this fraction of its life (0 to 1)")
	level := c.fs.String("log-level", "info", "debug, info, warn or error")
	if err := c.parse(args); err != nil {
		return err
	}
	log, err := cmdline.JSONLogger(*level, env.Stderr)
	if err != nil {
		return fmt.Errorf("%w: --%w", cmdline.ErrUsage, err)
	}
	if *renewAt <= 0 || *renewAt >= 1 {
		return fmt.Errorf("%w: --renew-at %g: want a fraction between 0 and 1", cmdline.ErrUsage, *renewAt)
	}
	var observe *mount.Layout
	if *noMount {
		observe, c.target = c.layout(), ""
	}
	c.log = log
	st, a, err := c.open(agent.Options{Log: log, PollInterval: *poll, RenewAt: *renewAt, Observe: observe})
	if err != nil {
		return err
	}
	defer func() { _, _ = a.Close(), st.Close() }()
	return a.Run(ctx)
}

// statusReport is `status --json`.
type statusReport struct {
	Enrolled          bool      `json:"enrolled"`
	Serial            string    `json:"serial,omitempty"`
	Board             string    `json:"board,omitempty"`
	HardwareID        string    `json:"hardwareId,omitempty"`
	CertificateExpiry time.Time `json:"certificateExpiry,omitzero"`
	CertificateState  string    `json:"certificateState,omitempty"`
	Generation        uint64    `json:"generation"`
	Image             string    `json:"image,omitempty"`
	// Mounted is what the last mount recorded; Kernel is what the kernel
	// has mounted on the target now. Disagreements lists every way they,
	// and the current image, differ (status then exits 6).
	Mounted       *mount.Record   `json:"mounted,omitempty"`
	Kernel        *mount.Observed `json:"kernel,omitempty"`
	Disagreements []string        `json:"disagreements,omitempty"`
	BuildTime     time.Time       `json:"buildTime,omitzero"`
	ClockFloor    time.Time       `json:"clockFloor,omitzero"`
	// Trial is the generation on trial (its health check not passed yet),
	// Healthy the last one found healthy, Bad those that failed here, and
	// Report the latest report to core and whether core has it.
	Trial   *state.Trial        `json:"trial,omitempty"`
	Healthy *state.Healthy      `json:"healthy,omitempty"`
	Bad     []state.Bad         `json:"bad,omitempty"`
	Report  *state.ReportRecord `json:"report,omitempty"`
	state.Status
}

// disagreements compares the kernel's view of the target with the record
// of the last mount and with the current image.
func disagreements(st *state.Dir, rec *mount.Record, k *mount.Observed, current string) []string {
	var out []string
	switch {
	case rec != nil && (k == nil || !k.Overlay):
		out = append(out, fmt.Sprintf("generation %d is recorded as mounted over %s, but the kernel shows %s there", rec.Generation, rec.Target, describe(k)))
	case rec == nil && k != nil && k.Overlay:
		out = append(out, fmt.Sprintf("the kernel shows an overlay of ours (%s) that no mount recorded", describe(k)))
	case rec != nil && k.Image() != rec.Image:
		out = append(out, fmt.Sprintf("generation %d (%s) is recorded as mounted, but the kernel maps %s", rec.Generation, rec.Image, describe(k)))
	}
	if k != nil && k.Overlay {
		if k.Deleted {
			out = append(out, "the mounted image's bundle file "+k.BackingFile+" was deleted")
		} else if dir := st.File(state.ImagesDir); filepath.Dir(k.BackingFile) != dir {
			out = append(out, "the mounted image comes from "+k.BackingFile+", not from "+dir)
		}
		if current != "" && k.Image() != current {
			out = append(out, fmt.Sprintf("the kernel maps %s, but the current image is %s", describe(k), current))
		}
	}
	return out
}

func describe(k *mount.Observed) string {
	switch {
	case k == nil:
		return "nothing mounted"
	case !k.Overlay:
		return "another mount (" + k.Other + ")"
	case k.BackingFile == "":
		return "our overlay over an image whose loop device cannot be read"
	}
	return fmt.Sprintf("%s through %s", k.Image(), k.LoopDevice)
}

func statusCmd(_ context.Context, env *cmdline.Env, args []string) error {
	c := newCommon(env, false, true)
	asJSON := c.fs.Bool("json", false, "print JSON")
	if err := c.parse(args); err != nil {
		return err
	}
	st, err := state.Open(c.state)
	if err != nil {
		return err
	}
	defer func() { _ = st.Close() }()
	floor := c.clockFloor(st)
	r := statusReport{Status: st.Status(), BuildTime: buildinfo.Time(), ClockFloor: floor.Time().UTC()}
	if r.LastError == "" { // cleared by a later success
		r.Refusal, r.RefusalStep = "", 0
	}
	if dev, err := st.Device(); err == nil {
		r.Enrolled, r.Serial, r.Board, r.HardwareID = true, dev.Serial, dev.Board, dev.HardwareID
	} else if !errors.Is(err, state.ErrNotEnrolled) {
		return err
	}
	if leaf, err := st.Leaf(); err == nil {
		r.CertificateExpiry = leaf.NotAfter.UTC()
		r.CertificateState = "valid"
		if now := floor.At(time.Now()); now.After(leaf.NotAfter) {
			r.CertificateState = "expired: enroll again at a factory proxy"
		} else if now.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 3).After(leaf.NotAfter) {
			r.CertificateState = "due for renewal"
		}
	}
	if hw, err := st.HighWater(); err == nil {
		r.Generation = hw.Generation
	}
	if cur, ok, err := st.Pointer(state.Current); err == nil && ok {
		r.Image = cur.Name
	}
	// What cannot be read is left out: status shows what it can.
	r.Trial, _ = st.Trial()
	if h, err := st.Healthy(); err == nil && h.Image != "" {
		r.Healthy = &h
	}
	r.Bad, _ = st.BadGenerations()
	r.Report, _ = st.LatestReport()
	if c.target != "" {
		l := *c.layout()
		if r.Mounted, err = mount.ReadRecord(l); err != nil {
			return err
		}
		if r.Kernel, err = mount.Observe(l); err != nil {
			r.Disagreements = append(r.Disagreements, "reading what the kernel has mounted: "+err.Error())
		}
		r.Disagreements = append(r.Disagreements, disagreements(st, r.Mounted, r.Kernel, r.Image)...)
	}
	var mismatch error
	if len(r.Disagreements) > 0 {
		mismatch = fmt.Errorf("%w: %s", errMismatch, strings.Join(r.Disagreements, "; "))
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
		return mismatch
	}
	if !r.Enrolled {
		_, _ = fmt.Fprintf(env.Stdout, "not enrolled (state %s)\n", c.state)
		return mismatch
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	}
	mounted := "no"
	if r.Kernel != nil && r.Kernel.Overlay && r.Mounted != nil && r.Kernel.Image() == r.Mounted.Image {
		mounted = fmt.Sprintf("generation %d over %s since %s (%s)", r.Mounted.Generation, r.Mounted.Target, ts(r.Mounted.MountedAt), describe(r.Kernel))
	} else if r.Kernel != nil {
		mounted = describe(r.Kernel)
	}
	_, _ = fmt.Fprintf(env.Stdout, "serial       %s\nboard        %s %s\ncertificate  until %s (%s)\ngeneration   %d (%s)\nmounted      %s\nlast check   %s\nlast update  %s\nclock floor  %s (built %s)\n",
		r.Serial, r.Board, r.HardwareID, ts(r.CertificateExpiry), r.CertificateState, r.Generation, r.Image, mounted, ts(r.LastCheck), ts(r.LastUpdate),
		ts(r.ClockFloor), ts(r.BuildTime))
	if r.Refusal != "" {
		_, _ = fmt.Fprintf(env.Stdout, "refused      %s (step %d of docs/image-format.md)\n", r.Refusal, r.RefusalStep)
	}
	if r.LastError != "" {
		_, _ = fmt.Fprintf(env.Stdout, "last error   %s: %s\n", ts(r.ErrorAt), r.LastError)
	}
	if r.Trial != nil {
		_, _ = fmt.Fprintf(env.Stdout, "on trial     generation %d since %s (health check not passed; boot %d of %s)\n",
			r.Trial.Generation, ts(r.Trial.Started), r.Trial.Attempts, r.Trial.BootID)
	}
	for _, b := range r.Bad {
		_, _ = fmt.Fprintf(env.Stdout, "bad          generation %d at %s: %s\n", b.Generation, ts(b.At), b.Reason)
	}
	if rp := r.Report; rp != nil {
		delivery := "sent"
		switch {
		case rp.Refused != "":
			delivery = "refused by core: " + rp.Refused
		case !rp.Sent && rp.Tries > 0:
			delivery = fmt.Sprintf("pending, %d tries, last: %s", rp.Tries, rp.LastError)
		case !rp.Sent:
			delivery = "pending"
		}
		_, _ = fmt.Fprintf(env.Stdout, "report       generation %d %s (running %d) at %s, %s\n",
			rp.Report.Generation, rp.Report.State, rp.Report.Running, ts(rp.Report.At), delivery)
	}
	for _, d := range r.Disagreements {
		_, _ = fmt.Fprintf(env.Stdout, "DISAGREES    %s\n", d)
	}
	return mismatch
}
