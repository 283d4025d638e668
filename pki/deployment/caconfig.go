package deployment

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/fleetprov/prov/pki/stepca"
	"github.com/fleetprov/prov/pki/token"
)

// makeCAs creates the root (self-signed, naming the trust domain) and the
// intermediate (path length 0, name-constrained: URIs to the trust domain,
// DNS names and IP addresses to the hosts given to init, so even a misused
// CA cannot mint identities a verifier would accept for another deployment,
// nor a server certificate for a host that is not one of ours).
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
	}
	b.hostConstraints().apply(interTmpl, o.TrustDomain)
	if inter, err = createCert(interTmpl, root, &interKey.PublicKey, rootKey); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("intermediate certificate: %w", err)
	}
	return root, rootKey, inter, interKey, nil
}

// hostConstraints are the hosts of init's options: the CA's, core's and
// every proxy's.
func (b *builder) hostConstraints() hostConstraints {
	lists := [][]string{b.opts.CAHosts, b.opts.CoreHosts}
	for _, p := range b.opts.Proxies {
		lists = append(lists, p.Hosts)
	}
	return constraintsFor(lists...)
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
	// crlURL goes into every certificate the templates make (a CRL
	// Distribution Point) and into the CRL itself (its Issuing Distribution
	// Point): OpenSSL takes a CRL as covering a certificate only when the
	// two name the same URL, and step-ca, left to itself, writes
	// https://<first dnsName>/1.0/crl, without the port.
	crlURL := b.caURL() + "/1.0/crl"
	tdata, err := json.Marshal(map[string]string{"trustDomain": o.TrustDomain, "crlURL": crlURL})
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
		DB:               b.caDatabase(),
		AuthorityConfig: &config.AuthConfig{
			Provisioners: provs,
			Backdate:     stepDuration(time.Minute),
		},
		TLS:        &tlsOpts,
		CommonName: o.TrustDomain + " Online CA",
		// A CRL is valid for cacheDuration (its nextUpdate) and step-ca
		// makes a new one every renewPeriod and at every revocation, so a
		// copy fetched at any moment stays valid for at least 40 minutes:
		// a broker refreshing its crlfile every few minutes (an expired CRL
		// makes OpenSSL refuse every client) survives several failed
		// fetches.
		CRL: &config.CRLConfig{
			Enabled:          true,
			GenerateOnRevoke: true,
			CacheDuration:    stepDuration(crlValidity),
			RenewPeriod:      stepDuration(crlRenewPeriod),
			IDPurl:           crlURL,
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
