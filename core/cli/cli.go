// Package cli is the prov-core command line: serve (the service), admin
// (the admins' client of its API) and image build (the offline image tool).
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/fleetprov/prov/core/config"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/imagebuild/conformance"
	"github.com/fleetprov/prov/core/service"
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Exit codes.
const (
	ExitOK    = cmdline.ExitOK
	ExitError = cmdline.ExitError
	ExitUsage = cmdline.ExitUsage
)

var program = &cmdline.Program{
	Name:    "prov-core",
	Summary: "the provisioning service (registry, signed images, mTLS API, MQTT)",
	Commands: []cmdline.Command{
		{Name: "image", Sub: []cmdline.Command{
			{Name: "build", Args: "--record FILE --signer-cert FILE --signer-key FILE --out FILE [flags]",
				Short: "build a device record's squashfs image and sign it into a bundle", Run: imageBuild},
			{Name: "conformance", Args: "--out DIR",
				Short: "write the bundle verifier's conformance suite (a root, bundles, cases.json; testdata/conformance)", Run: imageConformance},
		}},
		{Name: "store", Sub: storeCommands()},
		{Name: "serve", Args: "--config FILE", Short: "run the provisioning service (API, broker, registry)",
			Run: cmdline.Serve(config.Load, func(c *config.Config) string { return c.Log.Level },
				func(ctx context.Context, c *config.Config, log *slog.Logger) error { return service.Run(ctx, c, log) })},
		{Name: "admin", Args: adminArgs, Short: "list, show, set, set-group, reprovision, revoke, audit, backup (prov-core admin -h)", Run: runAdmin,
			Own: new(admin).commands()},
	},
}

// Program is prov-core's command line, for the test that tries every
// command's help and usage errors.
func Program() *cmdline.Program { return program }

// Main runs prov-core with args (without the program name).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return program.Main(ctx, args, stdout, stderr)
}

func imageConformance(_ context.Context, env *cmdline.Env, args []string) error {
	fs := env.Flags()
	out := fs.String("out", "", "the suite's directory (testdata/conformance in the repository)")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"out", *out}); err != nil {
		return err
	}
	if err := conformance.Write(*out); err != nil {
		return fmt.Errorf("conformance suite: %w", err)
	}
	_, _ = fmt.Fprintf(env.Stdout, "wrote the conformance suite to %s\n", *out)
	return nil
}

func imageBuild(_ context.Context, env *cmdline.Env, args []string) error {
	fs := env.Flags()
	recordFile := fs.String("record", "", "device record, JSON (- for standard input)")
	certFile := fs.String("signer-cert", "", "image signer certificate chain (PEM), as prov-pki issues it")
	keyFile := fs.String("signer-key", "", "image signer key (PKCS#8 PEM, mode 0600)")
	out := fs.String("out", "", "where to write the signed bundle")
	imageOut := fs.String("image-out", "", "also write the bare squashfs image here")
	var allow cmdline.List
	fs.Var(&allow, "allow-prefix", "a directory below /etc/ where data files may go, ending in / (repeatable; default "+imagespec.DataDir+")")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"record", *recordFile}, [2]string{"signer-cert", *certFile}, [2]string{"signer-key", *keyFile}, [2]string{"out", *out}); err != nil {
		return err
	}
	rules := imagespec.DefaultRules()
	if len(allow) > 0 {
		rules.AllowedPrefixes = allow
	}
	var data []byte
	var err error
	if *recordFile == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 4<<20))
	} else {
		data, err = os.ReadFile(*recordFile)
	}
	if err != nil {
		return fmt.Errorf("--record: %w", err)
	}
	rec, err := imagebuild.ParseRecord(data)
	if err != nil {
		return fmt.Errorf("--record %s: %w", *recordFile, err)
	}
	signer, err := signedimage.LoadSigner(*certFile, *keyFile)
	if err != nil {
		return err
	}
	bundle, img, err := imagebuild.BuildBundle(rec, rules, signer)
	if err != nil {
		return fmt.Errorf("--record %s: %w", *recordFile, err)
	}
	if err := os.WriteFile(*out, bundle, 0o644); err != nil { //nolint:gosec // a signed public artifact
		return fmt.Errorf("--out: %w", err)
	}
	if *imageOut != "" {
		if err := os.WriteFile(*imageOut, img, 0o644); err != nil { //nolint:gosec // public
			return fmt.Errorf("--image-out: %w", err)
		}
	}
	_, _ = fmt.Fprintf(env.Stdout, "bundle %s: serial %s, generation %d, image %d bytes, bundle %d bytes, signed by %s\n",
		*out, rec.Serial, rec.Generation, len(img), len(bundle), signer.Identity())
	return nil
}
