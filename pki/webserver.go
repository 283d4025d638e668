package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"slices"
	"time"
)

// VerifyWebServer checks a certificate chain (leaf first) meant for
// browsers alone, such as the proxy's console certificate: it leads to the
// pinned roots at the time at (zero: now), allows serverAuth, names every
// one of hosts (DNS names or IP addresses), and names no identity: no URI
// SAN, no SAN but DNS and IP, not a CA. Browsers refuse a leaf with a URI
// SAN under a critical URI name constraint, which the deployment's
// intermediate has; so this certificate is a server's for people, never a
// principal (IdentityOf refuses it).
func (b *TrustBundle) VerifyWebServer(chain []*x509.Certificate, hosts []string, at time.Time) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: empty chain", ErrUntrusted)
	}
	leaf := chain[0]
	if at.IsZero() {
		at = time.Now()
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: b.pool, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return classifyVerifyError(leaf, at, err)
	}
	switch {
	case leaf.IsCA:
		return fmt.Errorf("%w: %q is a CA", ErrNotWebServer, leaf.Subject.CommonName)
	case len(leaf.URIs) > 0:
		return fmt.Errorf("%w: %q names an identity (%s); browsers refuse it under the intermediate's URI name constraint", ErrNotWebServer, leaf.Subject.CommonName, leaf.URIs[0])
	case len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0:
		return fmt.Errorf("%w: %q names no host", ErrNotWebServer, leaf.Subject.CommonName)
	}
	if err := onlyHostSANs(leaf); err != nil {
		return err
	}
	for _, h := range hosts {
		if err := leaf.VerifyHostname(h); err != nil {
			return fmt.Errorf("%w: %q: %w", ErrNotWebServer, leaf.Subject.CommonName, err)
		}
	}
	return nil
}

// onlyHostSANs refuses every SAN type but DNS and IP: another name (an
// otherName, a directoryName) could be read as a principal by some reader.
func onlyHostSANs(cert *x509.Certificate) error {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSAN) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) > 0 {
			return fmt.Errorf("%w: unreadable subject alternative names", ErrNotWebServer)
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific || (n.Tag != sanDNS && n.Tag != sanIP) {
				return fmt.Errorf("%w: %q has a subject alternative name of type %d (only DNS and IP)", ErrNotWebServer, cert.Subject.CommonName, n.Tag)
			}
		}
	}
	return nil
}

// HostNames are the DNS names and IP addresses c names, IPs in their
// string form: what VerifyWebServer takes as hosts.
func HostNames(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}
