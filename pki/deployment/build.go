package deployment

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
)

// builder writes a new PKI directory (build.go: directories, CAs,
// provisioners, templates; caconfig.go: the keys and step-ca's ca.json), and
// records every file it creates for InitResult.
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
	dirs := []string{filepath.Dir(b.l.RootCert()), b.l.OfflineDir(), b.l.CADir(), filepath.Dir(b.l.Template(""))}
	if b.opts.DB == "" {
		dirs = append(dirs, filepath.Dir(b.l.CADatabase()))
	}
	for _, d := range dirs {
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

// caURL is where the online CA answers: the first CA host and the port of
// the CA address.
func (b *builder) caURL() string {
	_, port, _ := net.SplitHostPort(b.opts.CAAddress) // validated
	return (&url.URL{Scheme: "https", Host: net.JoinHostPort(b.opts.CAHosts[0], port)}).String()
}

func (b *builder) manifest() *Manifest {
	o := b.opts
	names := make([]string, len(o.Proxies))
	for i, p := range o.Proxies {
		names[i] = p.Name
	}
	return &Manifest{
		Version:             ManifestVersion,
		TrustDomain:         o.TrustDomain,
		CAURL:               b.caURL(),
		Proxies:             names,
		DeviceCertLifetime:  o.DeviceCertLifetime.String(),
		ServiceCertLifetime: o.ServiceCertLifetime.String(),
		CreatedAt:           o.Now.UTC(),
	}
}
