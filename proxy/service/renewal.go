package service

import (
	"crypto/x509"

	"github.com/fleetprov/prov/internal/renewal"
	"github.com/fleetprov/prov/pki"
)

// newRenewal watches the proxy's own certificate (and the console's, if
// any) and with renewal on renews it at step-ca before it ends
// (internal/renewal). The factory
// side's listener and the client of core read the pair at every
// handshake, so a renewed one is in use at once.
func (p *proxy) newRenewal() error {
	p.renewer = renewal.New(p.cfg.Renewal, append([]renewal.Cert{
		{Name: "tls", Role: pki.RoleProxy, KeyPair: p.self.KeyPair, CertFile: p.cfg.TLS.Cert, Installed: p.tlsRenewed},
	}, p.consoleRenewal()...), renewal.Options{Namespace: "prov_proxy", CAURL: p.cfg.CA.URL, Roots: p.self.Roots, Log: p.log})
	p.metrics.Register(p.renewer.Collectors()...)
	return nil
}

// tlsRenewed closes the idle connections to core: the next call presents
// the renewed certificate, and none outlives the old one for long.
// Requests in flight keep theirs.
func (p *proxy) tlsRenewed([]*x509.Certificate) error {
	if p.coreTransport != nil {
		p.coreTransport.CloseIdleConnections()
	}
	return nil
}
