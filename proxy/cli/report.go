package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/fleetprov/prov/internal/atomicfile"
	"github.com/fleetprov/prov/internal/cmdline"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/batchreport"
	"github.com/fleetprov/prov/proxy/config"
	"github.com/fleetprov/prov/proxy/vouch"
)

// report writes a batch report and its signature. With --config, the
// record, the key pair and the batch's manifest are the proxy's own; each
// flag given overrides its value.
func report(_ context.Context, env *cmdline.Env, args []string) error {
	fs := env.Flags()
	cfgPath := fs.String("config", "", "the proxy's configuration: record, tls key pair and batch manifests")
	logPath := fs.String("log", "", "the factory record (default: record.path)")
	certPath := fs.String("cert", "", "the proxy's certificate chain, PEM, leaf first (default: tls.cert)")
	keyPath := fs.String("key", "", "the proxy's private key (default: tls.key)")
	manifest := fs.String("manifest", "", "the batch's manifest, for its planned size (default: the batch's in vouching.batches)")
	batch := fs.String("batch", "", "the batch")
	formatName := fs.String("format", "", "csv or json")
	out := fs.String("out", "", "the report file; FILE.sig and FILE.pem are written beside it")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"batch", *batch}, [2]string{"format", *formatName}, [2]string{"out", *out}); err != nil {
		return err
	}
	format, err := batchreport.ParseFormat(*formatName)
	if err != nil {
		return cmdline.WithExitCode(ExitUsage, fmt.Errorf("--format: %w", err))
	}
	if *cfgPath != "" {
		c, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		fill(logPath, c.Record.Path)
		fill(certPath, c.TLS.Cert)
		fill(keyPath, c.TLS.Key)
		for _, b := range c.Vouching.Batches {
			if b.Name == *batch {
				fill(manifest, b.Manifest)
			}
		}
		if *manifest == "" {
			return fmt.Errorf("batch %q: not in %s's vouching.batches (name its manifest with --manifest)", *batch, *cfgPath)
		}
	}
	if err := cmdline.Required([2]string{"log", *logPath}, [2]string{"cert", *certPath}, [2]string{"key", *keyPath}, [2]string{"manifest", *manifest}); err != nil {
		return err
	}
	size, err := vouch.ManifestSize(*manifest)
	if err != nil {
		return err
	}
	kp, err := pki.LoadKeyPair(*certPath, *keyPath)
	if err != nil {
		return fmt.Errorf("the proxy's key pair: %w", err)
	}
	data, err := batchreport.Export(*logPath, *batch, size, format, time.Now())
	if err != nil {
		return err
	}
	sig, chain, err := batchreport.SignWith(data, kp.Certificate())
	if err != nil {
		return fmt.Errorf("%s: %w", *keyPath, err)
	}
	// The signature and chain first: a report file is never beside a
	// signature of another.
	for _, f := range []struct {
		path string
		data []byte
	}{{*out + ".sig", sig}, {*out + ".pem", chain}, {*out, data}} {
		if err := atomicfile.WriteFile(f.path, f.data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	r, err := batchreport.Parse(data)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(env.Stdout, "wrote %s (+.sig, .pem): batch %s, manifest %d, record head %d %s\n",
		*out, r.Batch, r.ManifestSize, r.Record.Entries, r.Record.Hash)
	return nil
}

func fill(flag *string, v string) {
	if *flag == "" {
		*flag = v
	}
}

// verifyReport checks a report; a report that does not verify exits 3,
// like a broken factory record.
func verifyReport(_ context.Context, env *cmdline.Env, args []string) error {
	fs := env.Flags()
	path := fs.String("report", "", "the report file (FILE.sig and FILE.pem beside it)")
	root := fs.String("root", "", "the deployment's root certificate")
	logPath := fs.String("log", "", "the factory record, to check that it still holds the reported head")
	if err := cmdline.Parse(fs, args); err != nil {
		return err
	}
	if err := cmdline.Required([2]string{"report", *path}, [2]string{"root", *root}); err != nil {
		return err
	}
	bundle, err := pki.LoadTrustBundle(*root)
	if err != nil {
		return err
	}
	var files [3][]byte
	for i, p := range []string{*path, *path + ".sig", *path + ".pem"} {
		if files[i], err = os.ReadFile(p); err != nil { //nolint:gosec // the operator names it
			return cmdline.WithExitCode(ExitBroken, err)
		}
	}
	v, err := batchreport.Verify(files[0], files[1], files[2], bundle)
	if err != nil {
		return cmdline.WithExitCode(ExitBroken, err)
	}
	r := v.Report
	_, _ = fmt.Fprintf(env.Stdout, "ok: batch %s signed by %s at %s; record head %d %s\n",
		r.Batch, v.Signer, r.ExportedAt.Format(time.RFC3339), r.Record.Entries, r.Record.Hash)
	if *logPath == "" {
		return nil
	}
	if err := batchreport.CheckHead(*logPath, r.Record); err != nil {
		// A cut or rewritten record and a broken chain alike: the report
		// cannot be matched to this record.
		return cmdline.WithExitCode(ExitBroken, err)
	}
	_, _ = fmt.Fprintf(env.Stdout, "ok: %s still holds entry %d with that hash\n", *logPath, r.Record.Entries)
	return nil
}
