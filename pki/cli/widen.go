package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/deployment"
)

// runWiden permits more server hosts in the intermediate's name
// constraints, which re-issues the intermediate with the root key.
func runWiden(_ context.Context, e *env, args []string) error {
	fs := newFlags(e)
	dir := fs.String("dir", "", "PKI directory made by prov-pki init")
	pwFile := fs.String("password-file", "", "file holding the deployment password (decrypts the root key)")
	rootKey := fs.String("root-key", "", "the encrypted root key, back from offline storage (default: DIR/offline/root_ca.key)")
	var hosts listFlag
	fs.Var(&hosts, "host", "DNS name or IP address a core or proxy certificate may name from now on (repeatable)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required([2]string{"dir", *dir}, [2]string{"password-file", *pwFile}); err != nil {
		return err
	}
	if len(hosts) == 0 {
		return fmt.Errorf("%w: --host is required: name each host to permit", errUsage)
	}
	d, err := deployment.Open(*dir)
	if err != nil {
		return err
	}
	pw, err := pki.ReadPasswordFile(*pwFile)
	if err != nil {
		return fmt.Errorf("--password-file: %w", err)
	}
	res, err := d.Widen(deployment.WidenOptions{Password: pw, RootKey: *rootKey, Hosts: hosts, Now: time.Now()})
	if err != nil {
		return err
	}
	if len(res.Added) == 0 {
		_, _ = fmt.Fprintf(e.stdout, "The intermediate already permits %s; nothing changed.\nPermitted hosts: %s\n", strings.Join(hosts, ", "), strings.Join(res.Permitted, ", "))
		return nil
	}
	_, _ = fmt.Fprintf(e.stdout, "Re-issued the intermediate (same key) to permit %s.\n  intermediate   %s\n  previous kept  %s\nPermitted hosts: %s\n",
		strings.Join(res.Added, ", "), d.IntermediateCert(), res.Replaced, strings.Join(res.Permitted, ", "))
	_, _ = fmt.Fprintf(e.stdout, "Copy %s to the CA host and restart the CA (prov-pki ca, or step-ca) so it signs for the new hosts; "+
		"then issue their certificates with prov-pki issue. Devices and services need nothing: they trust the root.\n"+
		"Put the root key back in offline storage and delete it here.\n", d.IntermediateCert())
	return nil
}
