package stepca

// Provisioner names in the deployment's ca.json. They are the issuer of
// every token, so the services that mint tokens (core, the proxy, prov-pki)
// need them without linking the deployment's step-ca configuration code.
const (
	// AdminProvisionerName is the admins' provisioner: it signs service
	// identities (prov-pki issue) and revokes (prov-pki revoke).
	AdminProvisionerName = "admin"
	// RevokerProvisionerName is core's provisioner: it can revoke, and its
	// template refuses every signature.
	RevokerProvisionerName = "core-revoker"
	proxyProvisionerPfx    = "proxy-"
)

// ProxyProvisionerName is the name of a proxy's provisioner in ca.json.
func ProxyProvisionerName(proxy string) string { return proxyProvisionerPfx + proxy }
