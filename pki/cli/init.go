package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/deployment"
)

// proxyFlag is a repeatable --proxy NAME[=HOST,HOST...].
type proxyFlag []deployment.ProxySpec

func (p *proxyFlag) String() string { return fmt.Sprint(*p) }

func (p *proxyFlag) Set(v string) error {
	name, hosts, _ := strings.Cut(v, "=")
	spec := deployment.ProxySpec{Name: strings.TrimSpace(name)}
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			spec.Hosts = append(spec.Hosts, h)
		}
	}
	*p = append(*p, spec)
	return nil
}

// hostsNote ends the help of each host flag: the intermediate's name
// constraints permit these hosts and no others.
const hostsNote = "; the CA certifies no other host until prov-pki widen"

func runInit(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e)
	var (
		o            deployment.InitOptions
		pwFile       string
		proxies      proxyFlag
		caHosts      listFlag
		coreHosts    listFlag
		deviceLife   = fs.Duration("device-cert-lifetime", deployment.DefaultDeviceCertLifetime, "default and maximum lifetime of device certificates")
		serviceLife  = fs.Duration("service-cert-lifetime", deployment.DefaultServiceCertLifetime, "default lifetime of admin, proxy, core and signer certificates")
		defaultHosts = strings.Join(deployment.DefaultHosts, ",")
	)
	fs.StringVar(&o.Dir, "dir", "", "PKI directory to create (must not exist, or be empty)")
	fs.StringVar(&pwFile, "password-file", "", "file holding the deployment password (encrypts the root, intermediate and admin provisioner keys)")
	fs.StringVar(&o.TrustDomain, "trust-domain", "", "the deployment's trust domain, a DNS name you own (e.g. fleet.example.com)")
	fs.Var(&proxies, "proxy", "a factory proxy and its server host names, NAME[=HOST,...] (repeatable; hosts default to "+defaultHosts+hostsNote+")")
	fs.StringVar(&o.CAAddress, "ca-address", deployment.DefaultCAAddress, "listen address of the online CA")
	fs.Var(&caHosts, "ca-host", "host name of the online CA (repeatable; the first is in the CA URL; default "+defaultHosts+hostsNote+")")
	fs.StringVar(&o.CoreName, "core-name", deployment.DefaultCoreName, "name of the core identity")
	fs.Var(&coreHosts, "core-host", "host name of core's TLS server (repeatable; default "+defaultHosts+hostsNote+")")
	fs.StringVar(&o.SignerName, "signer-name", deployment.DefaultSignerName, "name of the image-signer identity")
	fs.StringVar(&o.AdminName, "admin-name", deployment.DefaultAdminName, "name of the first admin identity")
	fs.StringVar(&o.DB, "db", "", "step-ca's database: empty for the embedded bbolt file in ca/db (one CA), or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, which several step-ca instances share (docs/operations.md)")
	fs.BoolVar(&o.Force, "force", false, "replace an existing PKI in --dir (it is moved aside, not deleted)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := required([2]string{"dir", o.Dir}, [2]string{"password-file", pwFile}, [2]string{"trust-domain", o.TrustDomain}); err != nil {
		return err
	}
	if len(proxies) == 0 {
		return fmt.Errorf("%w: --proxy is required (each proxy gets its own provisioner)", errUsage)
	}
	pw, err := pki.ReadPasswordFile(pwFile)
	if err != nil {
		return fmt.Errorf("--password-file: %w", err)
	}
	o.Password = pw
	o.Proxies = proxies
	o.CAHosts = caHosts
	o.CoreHosts = coreHosts
	o.DeviceCertLifetime = *deviceLife
	o.ServiceCertLifetime = *serviceLife

	res, err := deployment.Init(ctx, o)
	if err != nil {
		return err
	}
	printInit(e, res)
	return nil
}

func printInit(e *env, res *deployment.InitResult) {
	d := res.Deployment
	w := e.stdout
	_, _ = fmt.Fprintf(w, "Created the PKI of trust domain %s in %s\n", d.TrustDomain, d.Dir)
	if res.Replaced != "" {
		_, _ = fmt.Fprintf(w, "The previous PKI was moved to %s\n", res.Replaced)
	}
	_, _ = fmt.Fprintf(w, "Online CA: %s (run: prov-pki ca --dir %s --password-file FILE)\n", d.CAURL, d.Dir)
	if res.Database != "" {
		_, _ = fmt.Fprintf(w, "step-ca's database: PostgreSQL %s (several step-ca instances may share it: the same ca/ on each host)\n", res.Database)
	}
	_, _ = fmt.Fprintln(w)
	// Group by placement, offline first: that is what the admin must act on.
	order := []deployment.Placement{deployment.Offline, deployment.Public, deployment.CAHost}
	seen := map[deployment.Placement]bool{}
	for _, f := range res.Files {
		if !seen[f.Placement] {
			seen[f.Placement] = true
			if f.Placement != deployment.Offline && f.Placement != deployment.Public && f.Placement != deployment.CAHost {
				order = append(order, f.Placement)
			}
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, p := range order {
		if !seen[p] {
			continue
		}
		_, _ = fmt.Fprintf(tw, "%s:\n", strings.ToUpper(string(p[:1]))+string(p[1:]))
		for _, f := range res.Files {
			if f.Placement == p {
				rel, err := filepath.Rel(d.Dir, f.Path)
				if err != nil {
					rel = f.Path
				}
				_, _ = fmt.Fprintf(tw, "  %s\t%s\n", rel, f.What)
			}
		}
	}
	_ = tw.Flush()
	_, _ = fmt.Fprintf(w, "\nMove %s to offline storage now and delete it here.\n", d.OfflineDir())
	_, _ = fmt.Fprintf(w, "Bake %s into the devices' common rootfs: it is the only thing a new device trusts.\n", d.RootCert())
}
