package deployment

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
)

// ManifestVersion is the version of pki.json this code writes and reads.
const ManifestVersion = 1

// Errors of this package.
var (
	// ErrExists: init would overwrite an existing PKI or identity.
	ErrExists = errors.New("already exists")
	// ErrBadManifest: pki.json is missing, unreadable or invalid.
	ErrBadManifest = errors.New("bad PKI manifest")
	// ErrUnknownProxy: no provisioner exists for that proxy name.
	ErrUnknownProxy = errors.New("unknown proxy")
	// ErrNotRootKey: the key given as the root key is not the root's.
	ErrNotRootKey = errors.New("not the key of this PKI's root certificate")
)

// Manifest is pki.json: what clients of the PKI directory need beyond
// step-ca's own configuration.
type Manifest struct {
	Version     int    `json:"version"`
	TrustDomain string `json:"trustDomain"`
	// CAURL is where the online CA answers (https://host:port); it is also
	// the audience of tokens.
	CAURL string `json:"caURL"`
	// Proxies are the proxies that have a provisioner.
	Proxies []string `json:"proxies"`
	// DeviceCertLifetime and ServiceCertLifetime are the default (and for
	// devices the maximum) certificate lifetimes, as Go durations.
	DeviceCertLifetime  string    `json:"deviceCertLifetime"`
	ServiceCertLifetime string    `json:"serviceCertLifetime"`
	CreatedAt           time.Time `json:"createdAt"`
}

// Deployment is an opened PKI directory.
type Deployment struct {
	Layout
	Manifest
}

// Open reads and validates the manifest of the PKI in dir.
func Open(dir string) (*Deployment, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("PKI directory %q: %w", dir, err)
	}
	l := Layout{Dir: abs}
	data, err := os.ReadFile(l.ManifestFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist: is %s a PKI directory made by prov-pki init?", ErrBadManifest, l.ManifestFile(), abs)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadManifest, err)
	}
	m, err := parseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.ManifestFile(), err)
	}
	return &Deployment{Layout: l, Manifest: *m}, nil
}

func parseManifest(data []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: not valid JSON: %w", ErrBadManifest, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrBadManifest)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadManifest, err)
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	if m.Version != ManifestVersion {
		return fmt.Errorf("version: %d is not %d", m.Version, ManifestVersion)
	}
	if err := pki.ValidateTrustDomain(m.TrustDomain); err != nil {
		return fmt.Errorf("trustDomain: %w", err)
	}
	if u, err := url.Parse(m.CAURL); err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" {
		return fmt.Errorf("caURL: %q is not https://host:port", m.CAURL)
	}
	for i, p := range m.Proxies {
		if err := pki.ValidateName(p); err != nil {
			return fmt.Errorf("proxies[%d]: %w", i, err)
		}
	}
	for field, s := range map[string]string{"deviceCertLifetime": m.DeviceCertLifetime, "serviceCertLifetime": m.ServiceCertLifetime} {
		if d, err := time.ParseDuration(s); err != nil || d <= 0 {
			return fmt.Errorf("%s: %q is not a positive duration", field, s)
		}
	}
	return nil
}

// HasProxy reports whether name has a provisioner.
func (d *Deployment) HasProxy(name string) bool { return slices.Contains(d.Proxies, name) }

// AdminProvisioner decrypts the admin provisioner key with the deployment
// password.
func (d *Deployment) AdminProvisioner(password []byte) (*token.Provisioner, error) {
	p, err := token.Load(stepca.AdminProvisionerName, d.AdminProvisionerKey(), password)
	if err != nil {
		return nil, fmt.Errorf("admin provisioner: %w", err)
	}
	return p, nil
}

// ProxyProvisioner decrypts a proxy's provisioner key with its own password
// file.
func (d *Deployment) ProxyProvisioner(name string) (*token.Provisioner, error) {
	if !d.HasProxy(name) {
		return nil, fmt.Errorf("%w %q: this PKI has provisioners for %v", ErrUnknownProxy, name, d.Proxies)
	}
	pw, err := pki.ReadPasswordFile(d.ProxyProvisionerPassword(name))
	if err != nil {
		return nil, fmt.Errorf("proxy %s provisioner: %w", name, err)
	}
	p, err := token.Load(stepca.ProxyProvisionerName(name), d.ProxyProvisionerKey(name), pw)
	if err != nil {
		return nil, fmt.Errorf("proxy %s provisioner: %w", name, err)
	}
	return p, nil
}
