package deployment

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca"
	"github.com/fleetprov/prov/pki/token"
)

//go:embed templates/*.tpl
var templates embed.FS

// Template files in ca/templates/.
const (
	deviceTemplate     = "device.tpl"
	serviceTemplate    = "service.tpl"
	revokeOnlyTemplate = "revoke-only.tpl"
)

// Defaults of InitOptions, all in one place.
const (
	DefaultCAAddress           = "127.0.0.1:9000"
	DefaultDeviceCertLifetime  = 24 * time.Hour
	DefaultServiceCertLifetime = 90 * 24 * time.Hour
	DefaultCoreName            = "core"
	DefaultSignerName          = "images"
	DefaultAdminName           = "admin"
	// MinPasswordLength is the shortest deployment password init accepts.
	MinPasswordLength = 12
	rootLifetime      = 10 * 365 * 24 * time.Hour
	minDeviceLifetime = 5 * time.Minute
	maxServiceLife    = 365 * 24 * time.Hour
	// crlValidity and crlRenewPeriod: see caConfig.
	crlValidity    = time.Hour
	crlRenewPeriod = 20 * time.Minute
)

// DefaultHosts are the host names of servers (CA, core, proxies) when none
// are given: right for a single-machine trial, wrong for a factory.
var DefaultHosts = []string{"localhost", "127.0.0.1"}

// ProxySpec names a proxy and the host names of its factory-side server.
type ProxySpec struct {
	Name  string
	Hosts []string
}

// InitOptions describe a new deployment PKI. Zero fields take the defaults
// above.
type InitOptions struct {
	Dir         string
	Password    []byte
	TrustDomain string
	// CAAddress is the online CA's listen address, host:port.
	CAAddress string
	// CAHosts are the names of the CA's TLS certificate; the first is the
	// host of the CA URL.
	CAHosts   []string
	Proxies   []ProxySpec
	CoreName  string
	CoreHosts []string
	// SignerName names the image-signer identity (rotation issues a new
	// name, so devices can tell the signers apart).
	SignerName          string
	AdminName           string
	DeviceCertLifetime  time.Duration
	ServiceCertLifetime time.Duration
	// DB is step-ca's database: empty for the embedded bbolt file in
	// ca/db (one step-ca at a time), or a postgres:// URL of a database
	// that several step-ca instances share (the same ca.json, keys and
	// database on each host, each its own listen address). Its password,
	// if it has one, is written into ca.json (0600) and never printed.
	DB string
	// Force replaces an existing PKI; the old directory is moved aside.
	Force bool
	Now   time.Time
}

func (o *InitOptions) applyDefaults() {
	if o.CAAddress == "" {
		o.CAAddress = DefaultCAAddress
	}
	if len(o.CAHosts) == 0 {
		o.CAHosts = DefaultHosts
	}
	if o.CoreName == "" {
		o.CoreName = DefaultCoreName
	}
	if len(o.CoreHosts) == 0 {
		o.CoreHosts = DefaultHosts
	}
	for i := range o.Proxies {
		if len(o.Proxies[i].Hosts) == 0 {
			o.Proxies[i].Hosts = DefaultHosts
		}
	}
	if o.SignerName == "" {
		o.SignerName = DefaultSignerName
	}
	if o.AdminName == "" {
		o.AdminName = DefaultAdminName
	}
	if o.DeviceCertLifetime == 0 {
		o.DeviceCertLifetime = DefaultDeviceCertLifetime
	}
	if o.ServiceCertLifetime == 0 {
		o.ServiceCertLifetime = DefaultServiceCertLifetime
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
}

// validate names the option (as its command-line flag) that is wrong.
func (o *InitOptions) validate() error {
	if o.Dir == "" {
		return errors.New("--dir: no PKI directory given")
	}
	if len(o.Password) < MinPasswordLength {
		return fmt.Errorf("--password-file: the password has %d bytes; use at least %d", len(o.Password), MinPasswordLength)
	}
	if err := pki.ValidateTrustDomain(o.TrustDomain); err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	if _, port, err := net.SplitHostPort(o.CAAddress); err != nil || port == "" || port == "0" {
		return fmt.Errorf("--ca-address: %q is not host:port", o.CAAddress)
	}
	for _, h := range o.CAHosts {
		if err := validateHost(h); err != nil {
			return fmt.Errorf("--ca-host: %w", err)
		}
	}
	if len(o.Proxies) == 0 {
		return errors.New("--proxy: name at least one proxy (each gets its own provisioner)")
	}
	seen := map[string]bool{}
	for _, p := range o.Proxies {
		if err := pki.ValidateName(p.Name); err != nil {
			return fmt.Errorf("--proxy: %w", err)
		}
		if seen[p.Name] {
			return fmt.Errorf("--proxy: %q named twice", p.Name)
		}
		seen[p.Name] = true
		for _, h := range p.Hosts {
			if err := validateHost(h); err != nil {
				return fmt.Errorf("--proxy %s: %w", p.Name, err)
			}
		}
	}
	for flag, name := range map[string]string{"--core-name": o.CoreName, "--signer-name": o.SignerName, "--admin-name": o.AdminName} {
		if err := pki.ValidateName(name); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	for _, h := range o.CoreHosts {
		if err := validateHost(h); err != nil {
			return fmt.Errorf("--core-host: %w", err)
		}
	}
	if o.DeviceCertLifetime < minDeviceLifetime || o.DeviceCertLifetime > maxServiceLife {
		return fmt.Errorf("--device-cert-lifetime: %s is outside [%s, %s]", o.DeviceCertLifetime, minDeviceLifetime, maxServiceLife)
	}
	if o.ServiceCertLifetime < time.Hour || o.ServiceCertLifetime > maxServiceLife {
		return fmt.Errorf("--service-cert-lifetime: %s is outside [1h, %s]", o.ServiceCertLifetime, maxServiceLife)
	}
	if o.DB != "" {
		return validateDatabaseURL(o.DB)
	}
	return nil
}

// Placement says where a created file belongs.
type Placement string

// Placements of created files.
const (
	Offline Placement = "OFFLINE: move to offline storage now"
	CAHost  Placement = "stays on the CA host"
	Public  Placement = "public"
)

// HandOff is the placement of an identity's files: give them to that
// service and remove them here.
func HandOff(id pki.Identity) Placement {
	return Placement("hand to " + id.String())
}

// CreatedFile is one file init wrote.
type CreatedFile struct {
	Path      string
	What      string
	Placement Placement
}

// InitResult is what Init created.
type InitResult struct {
	Deployment *Deployment
	Files      []CreatedFile
	// Replaced is where an existing PKI was moved (with Force).
	Replaced string
	// Database is step-ca's PostgreSQL database with its password
	// redacted; empty for the embedded bbolt file.
	Database string
}

// Init creates a complete PKI for one deployment in opts.Dir: root and
// intermediate, step-ca's configuration with one JWK provisioner per proxy
// and one admin provisioner, and the certificates of core, the image
// signer, each proxy and an admin, issued through step-ca itself (in this
// process) so they are in its database and its templates applied.
// On error nothing is left behind and a replaced PKI is put back.
func Init(ctx context.Context, opts InitOptions) (res *InitResult, err error) {
	opts.applyDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if opts.DB != "" {
		if err := checkFreshDatabase(ctx, opts.DB); err != nil {
			return nil, err
		}
	}
	abs, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("--dir: %w", err)
	}
	l := Layout{Dir: abs}
	replaced, err := prepareDir(abs, opts.Force, opts.Now)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			return
		}
		_ = os.RemoveAll(abs)
		if replaced != "" {
			_ = os.Rename(replaced, abs)
		}
	}()

	b := &builder{l: l, opts: opts}
	if err := b.build(ctx); err != nil {
		return nil, err
	}
	d, err := Open(abs)
	if err != nil {
		return nil, err
	}
	res = &InitResult{Deployment: d, Files: b.files, Replaced: replaced}
	if opts.DB != "" {
		res.Database = RedactedDatabase(opts.DB)
	}
	return res, nil
}

// prepareDir makes dir an empty 0700 directory, moving a non-empty one
// aside when force is set.
func prepareDir(dir string, force bool, now time.Time) (replaced string, err error) {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", mkdir(dir)
	case err != nil:
		return "", fmt.Errorf("--dir: %w", err)
	case !fi.IsDir():
		return "", fmt.Errorf("--dir: %s exists and is not a directory", dir)
	}
	empty, err := isEmpty(dir)
	if err != nil {
		return "", fmt.Errorf("--dir: %w", err)
	}
	if empty {
		if err := os.Chmod(dir, dirMode); err != nil {
			return "", fmt.Errorf("--dir: %w", err)
		}
		return "", nil
	}
	if !force {
		return "", fmt.Errorf("--dir: %s %w and is not empty; refusing to overwrite a PKI (use --force to replace it; the old directory is kept)", dir, ErrExists)
	}
	replaced = fmt.Sprintf("%s.replaced-%s", dir, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(dir, replaced); err != nil {
		return "", fmt.Errorf("--force: move old PKI aside: %w", err)
	}
	return replaced, mkdir(dir)
}

func mkdir(dir string) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	// MkdirAll honours the umask; make the mode exact.
	if err := os.Chmod(dir, dirMode); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return nil
}

func isEmpty(dir string) (bool, error) {
	f, err := os.Open(dir) //nolint:gosec // the operator's directory
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }()
	_, err = f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return false, err
}

// issueFirstIdentities issues core, signer, admin and proxy certificates,
// and each proxy's console certificate, through the in-process authority.
func (b *builder) issueFirstIdentities(ctx context.Context, admin *token.Provisioner) (err error) {
	o := b.opts
	d, err := Open(b.l.Dir)
	if err != nil {
		return err
	}
	auth, err := ca.OpenAuthority(b.l.CAConfig(), o.Password)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := auth.Close(); err == nil {
			err = cerr
		}
	}()
	if b.opts.DB == "" {
		b.record(b.l.CADatabase(), "step-ca database", CAHost)
	}
	reqs := []IdentityRequest{
		{Role: pki.RoleCore, Name: o.CoreName, Hosts: o.CoreHosts},
		{Role: pki.RoleSigner, Name: o.SignerName},
		{Role: pki.RoleAdmin, Name: o.AdminName},
	}
	for _, p := range o.Proxies {
		reqs = append(reqs, IdentityRequest{Role: pki.RoleProxy, Name: p.Name, Hosts: p.Hosts})
	}
	for _, r := range reqs {
		out, err := d.IssueIdentity(ctx, auth, admin, r, time.Now())
		if err != nil {
			return err
		}
		what := map[pki.Role]string{
			pki.RoleCore:   "core TLS server (and MQTT client) certificate",
			pki.RoleSigner: "image signer certificate (Ed25519)",
			pki.RoleAdmin:  "admin client certificate",
			pki.RoleProxy:  "proxy server and client certificate",
		}[r.Role]
		b.record(out.CertFile, what, HandOff(out.Identity))
		b.record(out.KeyFile, "its private key", HandOff(out.Identity))
		if r.Role != pki.RoleProxy {
			continue
		}
		// The console page's certificate, beside the identity: same
		// hosts, no identity (browsers refuse the identity's).
		con, err := d.IssueConsole(ctx, auth, admin, ConsoleRequest{Proxy: r.Name, Hosts: r.Hosts}, time.Now())
		if err != nil {
			return err
		}
		b.record(con.CertFile, "proxy console certificate (for browsers; no identity)", HandOff(out.Identity))
		b.record(con.KeyFile, "its private key", HandOff(out.Identity))
	}
	return nil
}

const offlineReadme = `This directory holds the encrypted root CA key of the deployment.

Move it to offline storage now (an encrypted USB stick in a safe, an HSM
ceremony laptop) and delete it from this machine. Nothing online needs it:
the online CA signs with the intermediate key in ../ca/. You need it again
only to issue a new intermediate or to revoke the current one.
`
