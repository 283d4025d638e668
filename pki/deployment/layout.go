// Package deployment is one deployment's PKI on disk: the directory layout
// that prov-pki init writes, its manifest, issuing service identities
// (core, image signer, proxies, admins) through step-ca, and the
// intermediate's name constraints (Widen).
//
// Layout of a PKI directory (every directory 0700, every key 0600):
//
//	pki.json                       manifest: trust domain, CA URL, provisioners
//	certs/root_ca.crt              public root: bake into every device rootfs
//	certs/intermediate_ca.crt      the online CA's certificate
//	certs/intermediate_ca.crt.replaced-<time>  one it replaced (Widen)
//	offline/root_ca.key            encrypted root key: move to offline storage
//	ca/ca.json                     step-ca configuration (embedded or step-ca binary)
//	ca/intermediate_ca.key         encrypted intermediate key
//	ca/admin_provisioner.jwe       encrypted admin provisioner key
//	ca/templates/*.tpl             certificate templates of the provisioners
//	ca/db/step-ca.db               step-ca's bbolt database
//	<role>/<name>/cert.pem         an identity's certificate chain (leaf first)
//	<role>/<name>/key.pem          its private key
//	<role>/<name>/root_ca.crt      the root, so the directory is a complete hand-off
//	console/<proxy>/cert.pem, key.pem, root_ca.crt  a proxy's console certificate (no identity)
//	proxy/<name>/provisioner.jwe   the proxy's encrypted provisioner key
//	proxy/<name>/provisioner.password  and its own password
//	core/<name>/revoker.jwe        core's revoke-only provisioner key
//	core/<name>/revoker.password   and its own password
package deployment

import (
	"path/filepath"

	"github.com/fleetprov/prov/pki"
)

// Layout names the files of a PKI directory.
type Layout struct {
	Dir string // absolute
}

// ManifestFile is pki.json.
func (l Layout) ManifestFile() string { return filepath.Join(l.Dir, "pki.json") }

// RootCert is the public root certificate.
func (l Layout) RootCert() string { return filepath.Join(l.Dir, "certs", "root_ca.crt") }

// IntermediateCert is the online CA's certificate.
func (l Layout) IntermediateCert() string {
	return filepath.Join(l.Dir, "certs", "intermediate_ca.crt")
}

// OfflineDir holds what must leave the machine after init.
func (l Layout) OfflineDir() string { return filepath.Join(l.Dir, "offline") }

// RootKey is the encrypted root key (offline).
func (l Layout) RootKey() string { return filepath.Join(l.OfflineDir(), "root_ca.key") }

// CADir holds step-ca's configuration, keys and database.
func (l Layout) CADir() string { return filepath.Join(l.Dir, "ca") }

// CAConfig is step-ca's ca.json.
func (l Layout) CAConfig() string { return filepath.Join(l.CADir(), "ca.json") }

// IntermediateKey is the encrypted intermediate key.
func (l Layout) IntermediateKey() string { return filepath.Join(l.CADir(), "intermediate_ca.key") }

// AdminProvisionerKey is the admin provisioner's encrypted JWK.
func (l Layout) AdminProvisionerKey() string {
	return filepath.Join(l.CADir(), "admin_provisioner.jwe")
}

// Template is a certificate template file.
func (l Layout) Template(name string) string { return filepath.Join(l.CADir(), "templates", name) }

// CADatabase is step-ca's bbolt file.
func (l Layout) CADatabase() string { return filepath.Join(l.CADir(), "db", "step-ca.db") }

// IdentityDir is the hand-off directory of one service identity.
func (l Layout) IdentityDir(role pki.Role, name string) string {
	return filepath.Join(l.Dir, string(role), name)
}

// IdentityCert is an identity's certificate chain.
func (l Layout) IdentityCert(role pki.Role, name string) string {
	return filepath.Join(l.IdentityDir(role, name), "cert.pem")
}

// IdentityKey is an identity's private key.
func (l Layout) IdentityKey(role pki.Role, name string) string {
	return filepath.Join(l.IdentityDir(role, name), "key.pem")
}

// IdentityRoot is the copy of the root in an identity's directory.
func (l Layout) IdentityRoot(role pki.Role, name string) string {
	return filepath.Join(l.IdentityDir(role, name), "root_ca.crt")
}

// ProxyProvisionerKey is a proxy's encrypted provisioner key.
func (l Layout) ProxyProvisionerKey(name string) string {
	return filepath.Join(l.IdentityDir(pki.RoleProxy, name), "provisioner.jwe")
}

// ProxyProvisionerPassword is the password of a proxy's provisioner key.
func (l Layout) ProxyProvisionerPassword(name string) string {
	return filepath.Join(l.IdentityDir(pki.RoleProxy, name), "provisioner.password")
}

// CoreRevokerKey is core's revoke-only provisioner key.
func (l Layout) CoreRevokerKey(name string) string {
	return filepath.Join(l.IdentityDir(pki.RoleCore, name), "revoker.jwe")
}

// CoreRevokerPassword is the password of core's revoker key.
func (l Layout) CoreRevokerPassword(name string) string {
	return filepath.Join(l.IdentityDir(pki.RoleCore, name), "revoker.password")
}
