package cli

import (
	"context"
	"fmt"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca"
	"github.com/fleetprov/prov/pki/deployment"
)

func runCA(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e)
	dir := fs.String("dir", "", "PKI directory made by prov-pki init")
	pwFile := fs.String("password-file", "", "file holding the deployment password (decrypts the intermediate key)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required([2]string{"dir", *dir}, [2]string{"password-file", *pwFile}); err != nil {
		return err
	}
	d, err := deployment.Open(*dir)
	if err != nil {
		return err
	}
	pw, err := pki.ReadPasswordFile(*pwFile)
	if err != nil {
		return fmt.Errorf("--password-file: %w", err)
	}
	srv, err := ca.NewServer(d.CAConfig(), pw)
	if err != nil {
		return err
	}
	e.log.Info("step-ca starting", "address", srv.Address(), "url", d.CAURL, "config", d.CAConfig(), "trust_domain", d.TrustDomain)
	if err := srv.Run(ctx); err != nil {
		return err
	}
	e.log.Info("step-ca stopped")
	return nil
}
