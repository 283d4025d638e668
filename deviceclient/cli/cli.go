// Package cli is the prov-device command line: enroll, update, mount,
// unmount, run and status for the device (device.go), and the offline
// checks an operator runs on a bundle (verify, inspect).
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/inspect"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/deviceclient/tpmkey"
	"github.com/fleetprov/prov/internal/buildinfo"
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Exit codes. A refused bundle, a board that is not the one that
// enrolled and an expired certificate each have their own, distinct from a
// usage or I/O error, so scripts and units can tell them apart.
const (
	ExitOK          = cmdline.ExitOK
	ExitError       = cmdline.ExitError
	ExitUsage       = cmdline.ExitUsage
	ExitRefused     = 3
	ExitIDChanged   = 4
	ExitCertExpired = 5
	ExitMismatch    = 6
	ExitNotThisTPM  = 7
)

var (
	errRefused = errors.New("refused")
	// errMismatch: what the kernel has mounted is not what the state
	// directory says.
	errMismatch = errors.New("the mount disagrees with the state directory")
)

var program = &cmdline.Program{
	Name:    "prov-device",
	Summary: "the device provisioning client",
	Commands: []cmdline.Command{
		{Name: "enroll", Args: "--proxy URL [--root FILE] [--state DIR] [--key file|tpm] [--tpm PATH]", Short: "on the factory network: make a key, enroll through the proxy, install the first image", Run: enrollCmd},
		{Name: "update", Args: "[--state DIR]", Short: "fetch, verify and install a newer image from core", Run: updateCmd},
		{Name: "mount", Args: "[--state DIR] [--target /etc]", Short: "mount the current image read-only over /etc (overlayfs)", Run: mountCmd},
		{Name: "unmount", Args: "[--target /etc]", Short: "unmount the image and its overlay", Run: unmountCmd},
		{Name: "run", Args: "[--state DIR]", Short: "the daemon: MQTT notifications, polling, renewal", Run: runCmd},
		{Name: "status", Args: "[--json]", Short: "serial, certificate, generation, mount, last check", Run: statusCmd},
		{Name: "verify", Args: "--bundle FILE --root FILE --serial SERIAL", Short: "verify a signed bundle and run the pre-mount inspection of its image, every check of docs/image-format.md as a device runs them; print the verdict", Run: verifyCmd},
		{Name: "inspect", Args: "--bundle FILE --root FILE --serial SERIAL", Short: "the same, and list the image's entries", Run: inspectCmd},
	},
	Footer: `Exit status: 0 ok, 1 error, 2 usage, 3 bundle refused (the reason is printed),
4 this board is not the one that enrolled (an SD card moved between boards),
5 the certificate expired (enroll again at a factory proxy), 6 status: what the kernel
has mounted disagrees with the state directory, 7 the device key is not in this board's
TPM (the card was moved from another board).`,
	// The device's distinct failures, so that scripts and units can tell
	// them apart.
	Codes: []cmdline.ExitCode{
		{Code: ExitIDChanged, Is: []error{state.ErrIDChanged}},
		{Code: ExitCertExpired, Is: []error{agent.ErrCertExpired}},
		{Code: ExitRefused, Is: []error{errRefused, install.ErrRefused, signedimage.ErrRollback}},
		{Code: ExitMismatch, Is: []error{errMismatch}},
		{Code: ExitNotThisTPM, Is: []error{tpmkey.ErrNotThisTPM}},
	},
}

// Program is prov-device's command line, for the test that tries every
// command's help and usage errors.
func Program() *cmdline.Program { return program }

// Main runs prov-device with args (without the program name).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return program.Main(ctx, args, stdout, stderr)
}

// report is the --json output.
type report struct {
	Verdict string `json:"verdict"`
	// Error and Step name a refusal as docs/image-format.md does
	// ("rollback", 20), Check the inspection's check when step 25 refused
	// ("file-size"); Reason says what exactly was wrong.
	Error     string                   `json:"error,omitempty"`
	Step      int                      `json:"step,omitempty"`
	Check     string                   `json:"check,omitempty"`
	Reason    string                   `json:"reason,omitempty"`
	Statement *signedimage.Statement   `json:"statement,omitempty"`
	Signer    string                   `json:"signer,omitempty"`
	Metadata  *imagespec.ImageMetadata `json:"metadata,omitempty"`
	Entries   []inspect.Entry          `json:"entries,omitempty"`
}

func verifyCmd(_ context.Context, env *cmdline.Env, args []string) error {
	return check(env, args, false)
}

func inspectCmd(_ context.Context, env *cmdline.Env, args []string) error {
	return check(env, args, true)
}

// check verifies a bundle as the device would and inspects its image;
// list adds the image's entries to the report.
func check(env *cmdline.Env, args []string, list bool) error {
	fs := env.Flags()
	bundleFile := fs.String("bundle", "", "signed bundle to check")
	rootFile := fs.String("root", "", "the deployment's root certificate (PEM)")
	serial := fs.String("serial", "", "the serial the bundle must be for (10 hex digits)")
	minGen := fs.Uint64("min-generation", 0, "the lowest generation to accept (the device's high-water mark)")
	floor := fs.String("clock-floor", "", "verify at no earlier than this time (RFC 3339), for a clock without RTC")
	stateDir := fs.String("state", "", "a device's state directory: verify at no earlier than its clock floor either (read, never written)")
	asJSON := fs.Bool("json", false, "print a JSON report")
	var allow cmdline.List
	fs.Var(&allow, "allow-prefix", "a directory below /etc/ where data files may be (repeatable; default "+imagespec.DataDir+")")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"bundle", *bundleFile}, [2]string{"root", *rootFile}, [2]string{"serial", *serial}); err != nil {
		return err
	}
	if err := pki.ValidateSerial(*serial); err != nil {
		return fmt.Errorf("%w: --serial: %w", cmdline.ErrUsage, err)
	}
	// The binary's build time is the lowest floor; a check writes down
	// nothing that the bundle proves.
	clockFloor := buildinfo.Time()
	if *floor != "" {
		t, err := time.Parse(time.RFC3339, *floor)
		if err != nil {
			return fmt.Errorf("%w: --clock-floor: %w", cmdline.ErrUsage, err)
		}
		if t.After(clockFloor) {
			clockFloor = t
		}
	}
	if *stateDir != "" {
		t, err := deviceFloor(env, *stateDir, clockFloor)
		if err != nil {
			return err
		}
		clockFloor = t
	}
	rules := imagespec.DefaultRules()
	if len(allow) > 0 {
		rules.AllowedPrefixes = allow
	}
	roots, err := pki.LoadTrustBundle(*rootFile)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	f, err := os.Open(*bundleFile)
	if err != nil {
		return fmt.Errorf("--bundle: %w", err)
	}
	defer func() { _ = f.Close() }()

	var img bytes.Buffer
	v, err := signedimage.Verify(f, &img, signedimage.VerifyOptions{
		Roots: roots, Serial: *serial, MinGeneration: *minGen, Now: clock(), Floor: pki.NewFloor(clockFloor, nil), MaxImageSize: imagespec.MaxImageSize,
	})
	if err == nil {
		var l *inspect.Listing
		// The pre-mount inspection and the image.json comparison, as
		// install and mount run them.
		l, err = install.Check(v, img.Bytes(), rules)
		if err == nil {
			return printAccepted(env.Stdout, *asJSON, list, v, l)
		}
	}
	r := report{Verdict: "refused", Reason: err.Error()}
	if ref, ok := signedimage.RefusalOf(err); ok {
		r.Error, r.Step = string(ref.Reason), int(ref.Step)
	}
	if c, ok := errors.AsType[*inspect.Check](err); ok {
		r.Check = c.Name()
	}
	switch {
	case *asJSON:
		_ = json.NewEncoder(env.Stdout).Encode(r)
	case r.Check != "":
		_, _ = fmt.Fprintf(env.Stdout, "refused: %s, check %s (step %d of docs/image-format.md)\n", r.Error, r.Check, r.Step)
	case r.Error != "":
		_, _ = fmt.Fprintf(env.Stdout, "refused: %s (step %d of docs/image-format.md)\n", r.Error, r.Step)
	}
	return fmt.Errorf("%w: %w", errRefused, err)
}

// clock is what verify and inspect check at; a test seam.
var clock = time.Now

// deviceFloor is the clock floor of the device whose state directory is
// dir, base the lowest; a floor file that cannot be read is a warning.
func deviceFloor(env *cmdline.Env, dir string, base time.Time) (time.Time, error) {
	if _, err := os.Stat(dir); err != nil {
		return time.Time{}, fmt.Errorf("--state: %w", err)
	}
	st, err := state.Open(dir)
	if err != nil {
		return time.Time{}, fmt.Errorf("--state: %w", err)
	}
	defer func() { _ = st.Close() }()
	return st.ClockFloor(base, func(err error) { _, _ = fmt.Fprintf(env.Stderr, "%s: warning: %v\n", env.Name(), err) }).Time(), nil
}

func printAccepted(w io.Writer, asJSON, list bool, v *signedimage.Verified, l *inspect.Listing) error {
	if asJSON {
		r := report{Verdict: "accepted", Statement: &v.Statement, Signer: v.Signer.String(), Metadata: &l.Metadata}
		if list {
			r.Entries = l.Entries
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	files := 0
	for _, e := range l.Entries {
		if !e.Dir {
			files++
		}
	}
	_, _ = fmt.Fprintf(w, "accepted: every check of docs/image-format.md passed, the pre-mount inspection of the image included\n  serial      %s\n  generation  %d\n  issued      %s\n  image       %d bytes, sha256 %s\n  signer      %s\n  contents    %d entries, %d files\n",
		v.Serial, v.Generation, v.IssuedAt.Format(time.RFC3339), v.Length, v.SHA256, v.Signer, len(l.Entries), files)
	if list {
		for _, e := range l.Entries {
			_, _ = fmt.Fprintf(w, "  %s %8d  %s\n", e.Mode, e.Size, e.Path)
		}
	}
	return nil
}
