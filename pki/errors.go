package pki

import "errors"

// Sentinel errors of the pki package. Callers match them with errors.Is; the
// wrapping error names the certificate, file or field that was wrong.
var (
	// ErrNoIdentity: the certificate carries no identity URI SAN.
	ErrNoIdentity = errors.New("certificate carries no identity")
	// ErrAmbiguousIdentity: several identities, or names beside the identity
	// that could be read as another one (email SANs, a disagreeing CN).
	ErrAmbiguousIdentity = errors.New("certificate identity is ambiguous")
	// ErrMalformedIdentity: the identity URI does not follow the scheme.
	ErrMalformedIdentity = errors.New("malformed identity")
	// ErrForeignTrustDomain: a well-formed identity of another deployment.
	ErrForeignTrustDomain = errors.New("identity belongs to another trust domain")
	// ErrRoleNotAllowed: the identity's role may not do what was asked.
	ErrRoleNotAllowed = errors.New("identity role not allowed here")
	// ErrUntrusted: the chain does not lead to the pinned root.
	ErrUntrusted = errors.New("certificate not issued by the trusted root")
	// ErrExpired: the certificate is outside its validity at the effective
	// time (the later of the clock and the clock floor).
	ErrExpired = errors.New("certificate expired or not yet valid")
	// ErrKeyUsage: the certificate may not be used for this purpose.
	ErrKeyUsage = errors.New("certificate key usage does not allow this use")
	// ErrChainOrder: a chain is not a path as presented (leaf, then each
	// issuer in turn, the last issued by a pinned root; no root, none twice).
	ErrChainOrder = errors.New("certificate chain is not in issuing order")
	// ErrChainRules: a path breaks a CA rule (basic constraints, key usage,
	// extended key usage, path length, critical extensions, name constraints).
	ErrChainRules = errors.New("certificate chain breaks a CA rule")
	// ErrBadTrustBundle: the root file is missing, empty or holds something
	// other than CA certificates of one trust domain.
	ErrBadTrustBundle = errors.New("bad trust bundle")
	// ErrBadKeyPair: a certificate or key file is unreadable, malformed,
	// mismatched or too widely readable.
	ErrBadKeyPair = errors.New("bad certificate or key file")
)

// ErrNotWebServer: a certificate meant for browsers alone (the console's)
// names an identity, lacks a host, or carries other names.
var ErrNotWebServer = errors.New("not a web server certificate")
