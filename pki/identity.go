// Package pki is the deployment's trust model, shared by every binary: the one
// identity scheme for devices, proxies, admins, image signers and core,
// trust-bundle loading, TLS 1.3 server and mTLS client configurations, and
// chain verification with a clock floor for devices without a real-time clock.
//
// It depends on the standard library and go.step.sm/crypto only, because the
// device binary links it. The embedded CA and the PKI set-up live in the
// heavier subpackages ca and deployment.
package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/fleetprov/prov/internal/untrusted"
)

// Role is what an identity is for. Each certificate has exactly one.
type Role string

// The roles of a deployment.
const (
	RoleDevice Role = "device" // a board in the factory or the field
	RoleProxy  Role = "proxy"  // a factory proxy appliance
	RoleAdmin  Role = "admin"  // a person or tool administering core
	RoleSigner Role = "signer" // the image signer of core
	RoleCore   Role = "core"   // a core service instance
)

// Roles lists every role, in a fixed order.
var Roles = []Role{RoleDevice, RoleProxy, RoleAdmin, RoleSigner, RoleCore}

// ExtKeyUsage is the extended key usage a certificate of the role must
// allow: devices and admins are TLS clients, core and proxies TLS servers
// (and clients), the image signer signs code.
func (r Role) ExtKeyUsage() x509.ExtKeyUsage {
	switch r {
	case RoleDevice, RoleAdmin:
		return x509.ExtKeyUsageClientAuth
	case RoleSigner:
		return x509.ExtKeyUsageCodeSigning
	default:
		return x509.ExtKeyUsageServerAuth
	}
}

// ParseRole returns the role named s, or an error naming s.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("%w: unknown role %q (want one of device, proxy, admin, signer, core)", ErrMalformedIdentity, s)
}

// Identity is a principal of one deployment, written in certificates as the
// single URI SAN spiffe://<trust-domain>/<role>/<name>. A device's name is its
// 10-hex-digit serial; every other role's name is a DNS-label-like word.
type Identity struct {
	TrustDomain string
	Role        Role
	Name        string
}

// NewIdentity validates its parts and returns the identity.
func NewIdentity(trustDomain string, role Role, name string) (Identity, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return Identity{}, err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Identity{}, err
	}
	if role == RoleDevice {
		if err := ValidateSerial(name); err != nil {
			return Identity{}, err
		}
	} else if err := ValidateName(name); err != nil {
		return Identity{}, fmt.Errorf("%s name: %w", role, err)
	}
	return Identity{TrustDomain: trustDomain, Role: role, Name: name}, nil
}

// DeviceIdentity is NewIdentity for a device serial.
func DeviceIdentity(trustDomain, serial string) (Identity, error) {
	return NewIdentity(trustDomain, RoleDevice, serial)
}

// String returns the identity URI.
func (id Identity) String() string {
	return "spiffe://" + id.TrustDomain + "/" + string(id.Role) + "/" + id.Name
}

// URI returns the identity as a URL for a certificate's URI SANs.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/" + string(id.Role) + "/" + id.Name}
}

// CommonName is the subject CN that goes with the identity. A device's CN is
// its serial (Mosquitto's use_identity_as_username reads the CN, so broker
// ACLs can say %u); every other role's CN is "<role>/<name>", which can never
// be a serial.
func (id Identity) CommonName() string {
	if id.Role == RoleDevice {
		return id.Name
	}
	return string(id.Role) + "/" + id.Name
}

// IsZero reports whether id is the zero Identity.
func (id Identity) IsZero() bool { return id == Identity{} }

// ParseIdentity parses an identity URI. Only the canonical form is accepted:
// lower case, no percent-encoding, port, user, query or fragment, so that one
// identity has exactly one spelling.
func ParseIdentity(s string) (Identity, error) {
	const maxLen = 512
	if len(s) > maxLen {
		return Identity{}, fmt.Errorf("%w: URI longer than %d bytes", ErrMalformedIdentity, maxLen)
	}
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q does not start with spiffe://", ErrMalformedIdentity, s)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return Identity{}, fmt.Errorf("%w: %q is not spiffe://<trust-domain>/<role>/<name>", ErrMalformedIdentity, s)
	}
	role, err := ParseRole(parts[1])
	if err != nil {
		return Identity{}, fmt.Errorf("%q: %w", s, err)
	}
	id, err := NewIdentity(parts[0], role, parts[2])
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %q: %w", ErrMalformedIdentity, s, err)
	}
	return id, nil
}

// IdentityOf reads the identity of a leaf certificate. It does not verify
// the chain (see TrustBundle.Verify). A certificate whose names could be read
// as more than one principal is an error, never a guess:
//   - exactly one URI SAN, which must be a well-formed identity;
//   - no email SANs; DNS and IP SANs only for the server roles core and proxy;
//   - the URI spelt exactly as Identity.String spells it (scheme case too);
//   - no SAN types but DNS, IP and URI;
//   - at most one CN, and if present equal to Identity.CommonName;
//   - not a CA.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, fmt.Errorf("%w: no certificate", ErrNoIdentity)
	}
	switch {
	case len(cert.URIs) == 0:
		return Identity{}, fmt.Errorf("%w (subject %q)", ErrNoIdentity, cert.Subject.CommonName)
	case len(cert.URIs) > 1:
		return Identity{}, fmt.Errorf("%w: %d URI SANs", ErrAmbiguousIdentity, len(cert.URIs))
	case len(cert.EmailAddresses) > 0:
		return Identity{}, fmt.Errorf("%w: email SANs beside the identity", ErrAmbiguousIdentity)
	case cert.IsCA:
		return Identity{}, fmt.Errorf("%w: a CA certificate is not an identity", ErrAmbiguousIdentity)
	}
	// The URI as the certificate spells it, not as net/url re-spells it
	// (url.Parse lower-cases the scheme, so SPIFFE:// would pass): an
	// identity has one spelling, in the certificate too.
	raw, err := rawURISAN(cert)
	if err != nil {
		return Identity{}, err
	}
	id, err := ParseIdentity(raw)
	if err != nil {
		return Identity{}, err
	}
	if id.Role != RoleCore && id.Role != RoleProxy && (len(cert.DNSNames) > 0 || len(cert.IPAddresses) > 0) {
		return Identity{}, fmt.Errorf("%w: %s has DNS or IP SANs, which only core and proxy may have", ErrAmbiguousIdentity, id)
	}
	// pkix.Name keeps the last of several CNs: count them in the subject as
	// written, so that a second CN cannot hide behind the one checked.
	cns := 0
	for _, atv := range cert.Subject.Names {
		if atv.Type.Equal(oidCommonName) {
			cns++
		}
	}
	if cns > 1 {
		return Identity{}, fmt.Errorf("%w: %d CNs in the subject", ErrAmbiguousIdentity, cns)
	}
	if cn := cert.Subject.CommonName; cn != "" && cn != id.CommonName() {
		return Identity{}, fmt.Errorf("%w: CN %q disagrees with %s", ErrAmbiguousIdentity, cn, id)
	}
	return id, nil
}

// ValidateSerial checks a device serial: exactly 10 lowercase hex digits.
func ValidateSerial(s string) error {
	if len(s) != 10 {
		return fmt.Errorf("%w: serial %s: want 10 lowercase hex digits", ErrMalformedIdentity, untrusted.Quote(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: serial %s: want 10 lowercase hex digits", ErrMalformedIdentity, untrusted.Quote(s))
		}
	}
	return nil
}

// ValidateName checks the name of a non-device identity: 1 to 63 characters
// of a-z, 0-9 and '-', not starting or ending with '-'. Names become
// directory names, CNs and URI path segments, so nothing else is allowed.
func ValidateName(s string) error {
	if !isLabel(s) {
		return fmt.Errorf("%w: name %s: want 1-63 of a-z, 0-9 and '-', not starting or ending with '-'", ErrMalformedIdentity, untrusted.Quote(s))
	}
	return nil
}

// ValidateTrustDomain checks a trust domain: a lower-case DNS name of at most
// 253 characters.
func ValidateTrustDomain(s string) error {
	// Counted in characters, as said (a DNS name is ASCII: as many bytes).
	if n := utf8.RuneCountInString(s); n == 0 || n > 253 {
		return fmt.Errorf("%w: trust domain %s: %d characters, want a lower-case DNS name of 1 to 253", ErrMalformedIdentity, untrusted.Quote(s), n)
	}
	for _, label := range strings.Split(s, ".") {
		if !isLabel(label) {
			return fmt.Errorf("%w: trust domain %s: want a lower-case DNS name such as fleet.example.com", ErrMalformedIdentity, untrusted.Quote(s))
		}
	}
	return nil
}

func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

var (
	oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidSAN        = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// GeneralName tags of RFC 5280 section 4.2.1.6 that an identity
// certificate may carry; any other (otherName, directoryName, ...) could be
// read as another name by some other reader.
const (
	sanDNS = 2
	sanURI = 6
	sanIP  = 7
)

// rawURISAN returns the one URI SAN exactly as the certificate encodes it,
// refusing SAN types other than DNS, IP and URI.
func rawURISAN(cert *x509.Certificate) (string, error) {
	var uri []string
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSAN) {
			continue
		}
		var names []asn1.RawValue
		if rest, err := asn1.Unmarshal(ext.Value, &names); err != nil || len(rest) > 0 {
			return "", fmt.Errorf("%w: unreadable subject alternative names", ErrAmbiguousIdentity)
		}
		for _, n := range names {
			if n.Class != asn1.ClassContextSpecific {
				return "", fmt.Errorf("%w: a subject alternative name of class %d", ErrAmbiguousIdentity, n.Class)
			}
			switch n.Tag {
			case sanURI:
				uri = append(uri, string(n.Bytes))
			case sanDNS, sanIP:
			default:
				return "", fmt.Errorf("%w: a subject alternative name of type %d (only DNS, IP and URI)", ErrAmbiguousIdentity, n.Tag)
			}
		}
	}
	if len(uri) != 1 {
		return "", fmt.Errorf("%w: %d URI SANs", ErrAmbiguousIdentity, len(uri))
	}
	return uri[0], nil
}
