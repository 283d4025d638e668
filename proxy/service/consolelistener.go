package service

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/fleetprov/prov/internal/renewal"
	"github.com/fleetprov/prov/internal/serve"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/status"
)

// The console's own listener (console.listen). Browsers refuse every leaf
// of this deployment that has a URI SAN: the intermediate's name
// constraints are critical and constrain URIs, which Chromium does not
// implement, so by RFC 5280 it must refuse such a leaf. The proxy's
// identity keeps its URI (devices and core check the proxy by it), and a
// TLS server cannot tell a kiosk from a board before either sends
// anything; so the console has a certificate of its own, with the proxy's
// host names and no identity, on a port of its own.

// WithConsoleListener serves the console's own listener on ln
// (console.listen must be set).
func WithConsoleListener(ln net.Listener) Option {
	return func(o *options) { o.consoleListener = ln }
}

// newConsoleCert loads console.tls, if console.listen is set, and checks
// it as a browser would and more: it chains to the root, names every host
// of the proxy's identity and no identity at all. Anything else is a
// configuration error naming console.tls.cert (fail closed: a kiosk would
// refuse it, and one that named an identity would be a second identity).
func (p *proxy) newConsoleCert() error {
	con := p.cfg.Console
	if con.Listen == "" {
		return nil
	}
	kp, err := pki.LoadKeyPair(con.TLS.Cert, con.TLS.Key)
	if err != nil {
		return serve.Bad("console.tls.cert", "%v", err)
	}
	if err := p.self.Roots.VerifyWebServer(kp.Chain(), pki.HostNames(p.self.KeyPair.Leaf()), time.Time{}); err != nil {
		return serve.Bad("console.tls.cert", "%s: %v", con.TLS.Cert, err)
	}
	p.consoleCert = kp
	return nil
}

// listenConsole binds the console's listener, if there is one: before the
// proxy says it serves, so that a taken port stops it at start.
func (p *proxy) listenConsole() (net.Listener, error) {
	if p.consoleCert == nil {
		return nil, nil
	}
	return serve.Listen(p.cfg.Console.Listen, p.o.consoleListener)
}

// serveConsole serves the console's routes alone on ln with the console
// certificate, asking for no client certificate: who may read it is
// status.networks, as on the enrollment listener.
func (p *proxy) serveConsole(ctx context.Context, ln net.Listener, h http.Handler) error {
	tlsCfg := pki.ServerTLSConfig(p.consoleCert, p.self.Roots, pki.ServerOptions{ClientCerts: pki.NoClientCert})
	p.log.Info("prov-proxy serving the console", "address", ln.Addr().String(), "certificate", p.cfg.Console.TLS.Cert)
	return serve.HTTPS(ctx, ln, h, tlsCfg, p.cfg.HTTP.HTTPConfig, p.log)
}

// consoleRenewal is the console certificate for the renewer, if any.
func (p *proxy) consoleRenewal() []renewal.Cert {
	if p.consoleCert == nil {
		return nil
	}
	return []renewal.Cert{{Name: "console", KeyPair: p.consoleCert, CertFile: p.cfg.Console.TLS.Cert}}
}

// consoleHealth is the console certificate for the health panel, if any.
func (p *proxy) consoleHealth() []status.Certificate {
	if p.consoleCert == nil {
		return nil
	}
	leaf := p.consoleCert.Leaf()
	return []status.Certificate{{Name: "console", Subject: leaf.Subject.CommonName, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}}
}
