package deployment

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca"
	"github.com/fleetprov/prov/pki/stepca"
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
	return &InitResult{Deployment: d, Files: b.files, Replaced: replaced}, nil
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

type builder struct {
	l     Layout
	opts  InitOptions
	files []CreatedFile
}

func (b *builder) record(path, what string, p Placement) {
	b.files = append(b.files, CreatedFile{Path: path, What: what, Placement: p})
}

func (b *builder) write(path string, data []byte, mode os.FileMode, what string, p Placement) error {
	if err := writeFile(path, data, mode); err != nil {
		return err
	}
	b.record(path, what, p)
	return nil
}

// build writes the whole PKI directory, in the order each step needs:
// the CAs, the provisioners the CA configuration names, the configuration,
// and last the first identities, issued by that CA.
func (b *builder) build(ctx context.Context) error {
	if err := b.makeDirs(); err != nil {
		return err
	}
	if err := b.writeCAs(); err != nil {
		return err
	}
	provs, err := b.writeProvisioners()
	if err != nil {
		return err
	}
	if err := b.writeTemplates(); err != nil {
		return err
	}
	caJSON, err := b.caConfig(provs.admin, provs.revoker, provs.proxies)
	if err != nil {
		return err
	}
	if err := b.write(b.l.CAConfig(), caJSON, secretMode, "step-ca configuration", CAHost); err != nil {
		return err
	}
	m, err := json.MarshalIndent(b.manifest(), "", "  ")
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := b.write(b.l.ManifestFile(), append(m, '\n'), publicMode, "PKI manifest", CAHost); err != nil {
		return err
	}
	return b.issueFirstIdentities(ctx, provs.admin)
}

func (b *builder) makeDirs() error {
	for _, d := range []string{filepath.Dir(b.l.RootCert()), b.l.OfflineDir(), b.l.CADir(), filepath.Dir(b.l.CADatabase()), filepath.Dir(b.l.Template(""))} {
		if err := mkdir(d); err != nil {
			return err
		}
	}
	return nil
}

// writeCAs makes the root and the intermediate and writes their
// certificates and keys, the keys encrypted with the deployment password;
// the root key goes to offline/ with a note saying what to do with it.
func (b *builder) writeCAs() error {
	o := b.opts
	root, rootKey, inter, interKey, err := b.makeCAs()
	if err != nil {
		return err
	}
	if err := b.write(b.l.RootCert(), certsPEM(root), publicMode, "root certificate", Public); err != nil {
		return err
	}
	if err := b.write(b.l.IntermediateCert(), certsPEM(inter), publicMode, "intermediate certificate", CAHost); err != nil {
		return err
	}
	rootKeyPEM, err := keyPEM(rootKey, o.Password)
	if err != nil {
		return err
	}
	if err := b.write(b.l.RootKey(), rootKeyPEM, secretMode, "root key (encrypted)", Offline); err != nil {
		return err
	}
	if err := b.write(filepath.Join(b.l.OfflineDir(), "README.txt"), []byte(offlineReadme), publicMode, "what to do with offline/", Offline); err != nil {
		return err
	}
	interKeyPEM, err := keyPEM(interKey, o.Password)
	if err != nil {
		return err
	}
	return b.write(b.l.IntermediateKey(), interKeyPEM, secretMode, "intermediate key (encrypted)", CAHost)
}

// provisioners are the step-ca provisioners init makes.
type provisioners struct {
	admin   *token.Provisioner   // issues service identities; encrypted with the deployment password
	revoker *token.Provisioner   // core's, revoke-only
	proxies []*token.Provisioner // one per proxy, in the order of InitOptions.Proxies
}

// writeProvisioners makes the provisioners and writes their keys: the
// admin's encrypted with the deployment password, each service's with its
// own (writeProvisioner).
func (b *builder) writeProvisioners() (*provisioners, error) {
	o := b.opts
	admin, err := token.Generate(stepca.AdminProvisionerName)
	if err != nil {
		return nil, err
	}
	adminJWE, err := admin.Encrypt(o.Password)
	if err != nil {
		return nil, err
	}
	if err := b.write(b.l.AdminProvisionerKey(), adminJWE, secretMode, "admin provisioner key (encrypted)", CAHost); err != nil {
		return nil, err
	}
	proxyProvs := make([]*token.Provisioner, len(o.Proxies))
	for i, p := range o.Proxies {
		id, err := pki.NewIdentity(o.TrustDomain, pki.RoleProxy, p.Name)
		if err != nil {
			return nil, err
		}
		if proxyProvs[i], err = b.writeProvisioner(stepca.ProxyProvisionerName(p.Name), b.l.ProxyProvisionerKey(p.Name), b.l.ProxyProvisionerPassword(p.Name), "proxy provisioner key (encrypted)", HandOff(id)); err != nil {
			return nil, err
		}
	}
	coreID, err := pki.NewIdentity(o.TrustDomain, pki.RoleCore, o.CoreName)
	if err != nil {
		return nil, err
	}
	revoker, err := b.writeProvisioner(stepca.RevokerProvisionerName, b.l.CoreRevokerKey(o.CoreName), b.l.CoreRevokerPassword(o.CoreName), "core's revoke-only provisioner key (encrypted)", HandOff(coreID))
	if err != nil {
		return nil, err
	}
	return &provisioners{admin: admin, revoker: revoker, proxies: proxyProvs}, nil
}

// writeTemplates writes the certificate templates the provisioners name.
func (b *builder) writeTemplates() error {
	for _, name := range []string{deviceTemplate, serviceTemplate, revokeOnlyTemplate} {
		data, err := templates.ReadFile("templates/" + name)
		if err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		if err := b.write(b.l.Template(name), data, publicMode, "certificate template", CAHost); err != nil {
			return err
		}
	}
	return nil
}

// writeProvisioner makes a provisioner key for a service and writes it
// encrypted with its own random password, so that service never learns the
// deployment password.
func (b *builder) writeProvisioner(name, keyFile, passwordFile, what string, p Placement) (*token.Provisioner, error) {
	prov, err := token.Generate(name)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, raw); err != nil {
		return nil, fmt.Errorf("%s password: %w", name, err)
	}
	pw := []byte(base64.RawURLEncoding.EncodeToString(raw))
	jwe, err := prov.Encrypt(pw)
	if err != nil {
		return nil, err
	}
	if err := b.write(keyFile, jwe, secretMode, what, p); err != nil {
		return nil, err
	}
	if err := b.write(passwordFile, append(pw, '\n'), secretMode, "its password", p); err != nil {
		return nil, err
	}
	return prov, nil
}

func (b *builder) manifest() *Manifest {
	o := b.opts
	_, port, _ := net.SplitHostPort(o.CAAddress) // validated
	names := make([]string, len(o.Proxies))
	for i, p := range o.Proxies {
		names[i] = p.Name
	}
	return &Manifest{
		Version:             ManifestVersion,
		TrustDomain:         o.TrustDomain,
		CAURL:               (&url.URL{Scheme: "https", Host: net.JoinHostPort(o.CAHosts[0], port)}).String(),
		Proxies:             names,
		DeviceCertLifetime:  o.DeviceCertLifetime.String(),
		ServiceCertLifetime: o.ServiceCertLifetime.String(),
		CreatedAt:           o.Now.UTC(),
	}
}

// makeCAs creates the root (self-signed, naming the trust domain) and the
// intermediate (path length 0, URI SANs constrained to the trust domain, so
// even a misused CA cannot mint identities a verifier would accept for
// another deployment).
func (b *builder) makeCAs() (root *x509.Certificate, rootKey *ecdsa.PrivateKey, inter *x509.Certificate, interKey *ecdsa.PrivateKey, err error) {
	o := b.opts
	if rootKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("root key: %w", err)
	}
	if interKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("intermediate key: %w", err)
	}
	rootTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: o.TrustDomain + " Root CA", Organization: []string{o.TrustDomain}},
		NotBefore:             o.Now.Add(-time.Minute),
		NotAfter:              o.Now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: o.TrustDomain}},
	}
	if root, err = createCert(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("root certificate: %w", err)
	}
	interTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: o.TrustDomain + " Intermediate CA", Organization: []string{o.TrustDomain}},
		NotBefore:             o.Now.Add(-time.Minute),
		NotAfter:              o.Now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		PermittedURIDomains:   []string{o.TrustDomain},
	}
	if inter, err = createCert(interTmpl, root, &interKey.PublicKey, rootKey); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("intermediate certificate: %w", err)
	}
	return root, rootKey, inter, interKey, nil
}

func createCert(tmpl, parent *x509.Certificate, pub, priv any) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// caConfig is step-ca's ca.json. Paths are absolute so the embedded CA and
// the step-ca binary read the same file from any working directory.
func (b *builder) caConfig(admin, revoker *token.Provisioner, proxies []*token.Provisioner) ([]byte, error) {
	o := b.opts
	tdata, err := json.Marshal(map[string]string{"trustDomain": o.TrustDomain})
	if err != nil {
		return nil, err
	}
	provs := provisioner.List{b.adminProvisioner(admin, tdata), b.revokerProvisioner(revoker)}
	for _, p := range proxies {
		provs = append(provs, b.proxyProvisioner(p, tdata))
	}
	tlsOpts := config.DefaultTLSOptions
	tlsOpts.MinVersion = 1.3
	tlsOpts.MaxVersion = 1.3
	cfg := config.Config{
		Root:             []string{b.l.RootCert()},
		FederatedRoots:   []string{},
		IntermediateCert: b.l.IntermediateCert(),
		IntermediateKey:  b.l.IntermediateKey(),
		Address:          o.CAAddress,
		DNSNames:         slices.Clone(o.CAHosts),
		Logger:           json.RawMessage(`{"format":"json"}`),
		DB:               &db.Config{Type: "bbolt", DataSource: b.l.CADatabase()},
		AuthorityConfig: &config.AuthConfig{
			Provisioners: provs,
			Backdate:     stepDuration(time.Minute),
		},
		TLS:        &tlsOpts,
		CommonName: o.TrustDomain + " Online CA",
		CRL: &config.CRLConfig{
			Enabled:          true,
			GenerateOnRevoke: true,
			CacheDuration:    stepDuration(time.Hour),
		},
	}
	data, err := json.MarshalIndent(&cfg, "", "  ") //nolint:gosec // cfg.Password stays empty: step-ca gets it from --password-file
	if err != nil {
		return nil, fmt.Errorf("step-ca configuration: %w", err)
	}
	return append(data, '\n'), nil
}

// adminProvisioner issues service identities (serviceTemplate), for an
// hour up to maxServiceLife, renewable at step-ca.
func (b *builder) adminProvisioner(admin *token.Provisioner, tdata json.RawMessage) *provisioner.JWK {
	no := false
	return &provisioner.JWK{
		Type: "JWK",
		Name: stepca.AdminProvisionerName,
		Key:  admin.PublicKey(),
		Claims: &provisioner.Claims{
			MinTLSDur:      stepDuration(time.Hour),
			MaxTLSDur:      stepDuration(maxServiceLife),
			DefaultTLSDur:  stepDuration(b.opts.ServiceCertLifetime),
			DisableRenewal: &no,
		},
		Options: &provisioner.Options{X509: &provisioner.X509Options{
			TemplateFile: b.l.Template(serviceTemplate),
			TemplateData: tdata,
		}},
	}
}

// revokerProvisioner is core's: its template (revokeOnlyTemplate) refuses
// to sign anything, so all it can do is revoke.
func (b *builder) revokerProvisioner(revoker *token.Provisioner) *provisioner.JWK {
	return &provisioner.JWK{
		Type: "JWK",
		Name: revoker.Name(),
		Key:  revoker.PublicKey(),
		Options: &provisioner.Options{X509: &provisioner.X509Options{
			TemplateFile: b.l.Template(revokeOnlyTemplate),
		}},
	}
}

// proxyProvisioner is a proxy's: device certificates only (deviceTemplate),
// for the device lifetime, renewable at step-ca until they expire.
func (b *builder) proxyProvisioner(p *token.Provisioner, tdata json.RawMessage) *provisioner.JWK {
	no := false
	return &provisioner.JWK{
		Type: "JWK",
		Name: p.Name(),
		Key:  p.PublicKey(),
		Claims: &provisioner.Claims{
			MinTLSDur:               stepDuration(minDeviceLifetime),
			MaxTLSDur:               stepDuration(b.opts.DeviceCertLifetime),
			DefaultTLSDur:           stepDuration(b.opts.DeviceCertLifetime),
			DisableRenewal:          &no,
			AllowRenewalAfterExpiry: &no,
		},
		Options: &provisioner.Options{X509: &provisioner.X509Options{
			TemplateFile: b.l.Template(deviceTemplate),
			TemplateData: tdata,
		}},
	}
}

func stepDuration(d time.Duration) *provisioner.Duration { return &provisioner.Duration{Duration: d} }

// issueFirstIdentities issues core, signer, admin and proxy certificates
// through the in-process authority.
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
	b.record(b.l.CADatabase(), "step-ca database", CAHost)
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
	}
	return nil
}

const offlineReadme = `This directory holds the encrypted root CA key of the deployment.

Move it to offline storage now (an encrypted USB stick in a safe, an HSM
ceremony laptop) and delete it from this machine. Nothing online needs it:
the online CA signs with the intermediate key in ../ca/. You need it again
only to issue a new intermediate or to revoke the current one.
`
