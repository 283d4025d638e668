package stepca

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
)

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

// ProvisionerInfo is what step-ca says of one of its provisioners.
type ProvisionerInfo struct {
	Name  string
	Type  string
	KeyID string // a JWK provisioner's key
	// DefaultLifetime is the certificates' default lifetime, as step-ca
	// writes it ("24h0m0s"); empty when it gives none.
	DefaultLifetime string
}

// maxProvisionerPages bounds the walk of /provisioners: a deployment has
// a handful, one per proxy.
const maxProvisionerPages = 100

// Provisioner looks up a provisioner by name in step-ca's list (GET
// /provisioners, page by page): what the proxy's console checks, since a
// provisioner removed or re-keyed at the CA makes every signature fail.
// ErrNoProvisioner if step-ca does not list it.
func (c *Client) Provisioner(ctx context.Context, name string) (*ProvisionerInfo, error) {
	cursor := ""
	for range maxProvisionerPages {
		var page struct {
			Provisioners []struct {
				Type string `json:"type"`
				Name string `json:"name"`
				Key  struct {
					KeyID string `json:"kid"`
				} `json:"key"`
				Claims struct {
					DefaultTLSDur string `json:"defaultTLSCertDuration"`
				} `json:"claims"`
			} `json:"provisioners"`
			NextCursor string `json:"nextCursor"`
		}
		path := "/provisioners?limit=100"
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		if err := c.call(ctx, http.MethodGet, path, nil, &page); err != nil {
			return nil, fmt.Errorf("step-ca %s provisioners: %w", c.base, err)
		}
		for _, p := range page.Provisioners {
			if p.Name == name {
				return &ProvisionerInfo{Name: p.Name, Type: p.Type, KeyID: p.Key.KeyID, DefaultLifetime: p.Claims.DefaultTLSDur}, nil
			}
		}
		if page.NextCursor == "" || page.NextCursor == cursor {
			break
		}
		cursor = page.NextCursor
	}
	return nil, fmt.Errorf("%w: step-ca %s does not list %q", ErrNoProvisioner, c.base, name)
}
