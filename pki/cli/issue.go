package cli

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
)

// adminSession is what issue and revoke share: the opened PKI, the admin
// provisioner and a client of the running CA.
type adminSession struct {
	d      *deployment.Deployment
	admin  *token.Provisioner
	client *stepca.Client
}

func openAdminSession(dir, pwFile, caURL string) (*adminSession, error) {
	d, err := deployment.Open(dir)
	if err != nil {
		return nil, err
	}
	pw, err := pki.ReadPasswordFile(pwFile)
	if err != nil {
		return nil, fmt.Errorf("--password-file: %w", err)
	}
	admin, err := d.AdminProvisioner(pw)
	if err != nil {
		return nil, err
	}
	if caURL == "" {
		caURL = d.CAURL
	}
	roots, err := pki.LoadTrustBundle(d.RootCert())
	if err != nil {
		return nil, err
	}
	client, err := stepca.New(caURL, roots)
	if err != nil {
		return nil, fmt.Errorf("--ca-url: %w", err)
	}
	return &adminSession{d: d, admin: admin, client: client}, nil
}

func runIssue(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e)
	dir := fs.String("dir", "", "PKI directory made by prov-pki init")
	pwFile := fs.String("password-file", "", "file holding the deployment password (decrypts the admin provisioner key)")
	roleName := fs.String("role", "", "role of the new identity: admin, proxy, core or signer; or console: a proxy's console certificate (no identity)")
	name := fs.String("name", "", "name of the new identity (a-z, 0-9, '-'); for console, the proxy's")
	var hosts listFlag
	fs.Var(&hosts, "host", "DNS name or IP address of a core or proxy server (repeatable)")
	caURL := fs.String("ca-url", "", "URL of the running CA (default: the PKI's CA URL)")
	force := fs.Bool("force", false, "replace an existing identity of that name (the old directory is kept aside)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required([2]string{"dir", *dir}, [2]string{"password-file", *pwFile}, [2]string{"role", *roleName}, [2]string{"name", *name}); err != nil {
		return err
	}
	if *roleName == "console" {
		return issueConsole(ctx, e, *dir, *pwFile, *caURL, deployment.ConsoleRequest{Proxy: *name, Hosts: hosts, Replace: *force})
	}
	role, err := pki.ParseRole(*roleName)
	if err != nil || role == pki.RoleDevice {
		return fmt.Errorf("%w: --role %q: want admin, proxy, core, signer or console (devices enroll through a proxy)", errUsage, *roleName)
	}
	s, err := openAdminSession(*dir, *pwFile, *caURL)
	if err != nil {
		return err
	}
	out, err := s.d.IssueIdentity(ctx, s.client, s.admin, deployment.IdentityRequest{Role: role, Name: *name, Hosts: hosts, Replace: *force}, time.Now())
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(e.stdout, "Issued %s\n  certificate  %s\n  key          %s\n  serial       %s\n  valid until  %s\n",
		out.Identity, out.CertFile, out.KeyFile, out.Leaf.SerialNumber, out.Leaf.NotAfter.UTC().Format(time.RFC3339))
	if out.Replaced != "" {
		_, _ = fmt.Fprintf(e.stdout, "The previous identity was moved to %s; revoke it with: prov-pki revoke --dir %s --password-file FILE --cert %s\n",
			out.Replaced, s.d.Dir, out.Replaced+"/cert.pem")
	}
	_, _ = fmt.Fprintf(e.stdout, "Hand %s to the service and delete the key here.\n", out.Dir)
	return nil
}

// issueConsole issues a proxy's console certificate (prov-pki issue
// --role console --name <proxy> --host ...): its hosts, no identity.
func issueConsole(ctx context.Context, e *env, dir, pwFile, caURL string, req deployment.ConsoleRequest) error {
	s, err := openAdminSession(dir, pwFile, caURL)
	if err != nil {
		return err
	}
	out, err := s.d.IssueConsole(ctx, s.client, s.admin, req, time.Now())
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(e.stdout, "Issued the console certificate of proxy %s (hosts %v, no identity)\n  certificate  %s\n  key          %s\n  serial       %s\n  valid until  %s\n",
		req.Proxy, req.Hosts, out.CertFile, out.KeyFile, out.Leaf.SerialNumber, out.Leaf.NotAfter.UTC().Format(time.RFC3339))
	if out.Replaced != "" {
		_, _ = fmt.Fprintf(e.stdout, "The previous one was moved to %s.\n", out.Replaced)
	}
	_, _ = fmt.Fprintf(e.stdout, "Hand %s to the proxy (console.tls) and delete the key here.\n", out.Dir)
	return nil
}

func runRevoke(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e)
	dir := fs.String("dir", "", "PKI directory made by prov-pki init")
	pwFile := fs.String("password-file", "", "file holding the deployment password (decrypts the admin provisioner key)")
	certFile := fs.String("cert", "", "certificate to revoke (PEM, leaf first)")
	serial := fs.String("serial", "", "serial number to revoke, in decimal as step-ca writes it (instead of --cert)")
	reason := fs.String("reason", "", "why, for the CA's records")
	caURL := fs.String("ca-url", "", "URL of the running CA (default: the PKI's CA URL)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required([2]string{"dir", *dir}, [2]string{"password-file", *pwFile}); err != nil {
		return err
	}
	if (*certFile == "") == (*serial == "") {
		return fmt.Errorf("%w: give exactly one of --cert and --serial", errUsage)
	}
	what := *serial
	if *certFile != "" {
		leaf, err := readLeaf(*certFile)
		if err != nil {
			return fmt.Errorf("--cert: %w", err)
		}
		*serial = leaf.SerialNumber.String()
		what = fmt.Sprintf("%s (%s)", *serial, describe(leaf))
	} else if n, ok := new(big.Int).SetString(*serial, 10); !ok || n.Sign() <= 0 {
		return fmt.Errorf("%w: --serial %q is not a positive decimal number", errUsage, *serial)
	}
	s, err := openAdminSession(*dir, *pwFile, *caURL)
	if err != nil {
		return err
	}
	tok, err := s.admin.RevokeToken(s.client.RevokeAudience(), *serial, time.Now())
	if err != nil {
		return err
	}
	if err := s.client.Revoke(ctx, *serial, tok, *reason); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(e.stdout, "Revoked %s.\nstep-ca now refuses to renew it and lists it in its CRL (%s/1.0/crl).\n", what, s.d.CAURL)
	return nil
}

func readLeaf(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the admin names the file
	if err != nil {
		return nil, err
	}
	certs, err := pki.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs[0], nil
}

func describe(c *x509.Certificate) string {
	if id, err := pki.IdentityOf(c); err == nil {
		return id.String()
	}
	return "CN " + c.Subject.CommonName
}
