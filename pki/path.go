package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Path is a certificate chain verified exactly as it was presented (leaf,
// then each intermediate in issuing order) and the pinned root that issued
// its last certificate. Unlike Verify, which treats the intermediates as a
// pool to build paths from (so a root among them, one twice, or any order
// is accepted), a Path is one spelling of one path: what a verifier written
// from docs/image-format.md checks too.
type Path struct {
	// Certs are the chain as presented, then the root.
	Certs []*x509.Certificate
	// NotBefore and NotAfter are when every certificate of the path is
	// valid: the latest NotBefore and the earliest NotAfter.
	NotBefore, NotAfter time.Time
}

// pathSignatureAlgorithms are the certificate signature algorithms a path
// may use; docs/image-format.md lists them so that another verifier accepts
// the same ones.
var pathSignatureAlgorithms = []x509.SignatureAlgorithm{
	x509.PureEd25519,
	x509.ECDSAWithSHA256, x509.ECDSAWithSHA384, x509.ECDSAWithSHA512,
	x509.SHA256WithRSA, x509.SHA384WithRSA, x509.SHA512WithRSA,
}

// knownCritical are the extensions a certificate of a path may mark
// critical: those whose meaning the verifier applies (basic constraints,
// key usage, extended key usage, subject alternative names, name
// constraints). Any other critical extension is refused, whether or not
// crypto/x509 happens to parse it.
var knownCritical = []asn1.ObjectIdentifier{
	{2, 5, 29, 19}, {2, 5, 29, 15}, {2, 5, 29, 37}, {2, 5, 29, 17}, {2, 5, 29, 30},
}

// pathRulesUsage keys PathRules' entries in the verified-chains memo apart
// from Verify's, which are keyed by a real extended key usage.
const pathRulesUsage = x509.ExtKeyUsage(-1)

// IssuingOrder checks that chain is a path as presented: each certificate
// issued by the next (issuer name equal to its subject, signature valid
// with one of the accepted algorithms), the last issued by a pinned root,
// no certificate self-issued (a root, pinned or not, is never sent) and
// none twice. It returns the chain with the root appended. Errors wrap
// ErrChainOrder.
func (b *TrustBundle) IssuingOrder(chain []*x509.Certificate) ([]*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: empty chain", ErrChainOrder)
	}
	// The same chain again (every bundle of one signer): its signatures
	// were checked, and what they prove does not change.
	key := chainKey(chain, 0)
	if r, ok := b.issuers.get(key); ok {
		return append(slices.Clone(chain), r), nil
	}
	for i, c := range chain {
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			return nil, fmt.Errorf("%w: certificate %d (%q) is self-issued; a root is never sent", ErrChainOrder, i, c.Subject.CommonName)
		}
		for j := range i {
			if bytes.Equal(chain[j].Raw, c.Raw) {
				return nil, fmt.Errorf("%w: certificates %d and %d are the same", ErrChainOrder, j, i)
			}
		}
	}
	issued := func(child, parent *x509.Certificate) error {
		if !bytes.Equal(child.RawIssuer, parent.RawSubject) {
			return fmt.Errorf("issuer %q is not %q", child.Issuer.CommonName, parent.Subject.CommonName)
		}
		if !slices.Contains(pathSignatureAlgorithms, child.SignatureAlgorithm) {
			return fmt.Errorf("signature algorithm %s is not accepted", child.SignatureAlgorithm)
		}
		// The signature alone: whether parent may issue (CA bit, key
		// usage) is a rule of PathRules, as the specification orders them.
		return parent.CheckSignature(child.SignatureAlgorithm, child.RawTBSCertificate, child.Signature)
	}
	for i := range len(chain) - 1 {
		if err := issued(chain[i], chain[i+1]); err != nil {
			return nil, fmt.Errorf("%w: certificate %d is not issued by certificate %d: %w", ErrChainOrder, i, i+1, err)
		}
	}
	last := chain[len(chain)-1]
	var errs []error
	for _, r := range b.roots {
		err := issued(last, r)
		if err == nil {
			b.issuers.put(key, r)
			return append(slices.Clone(chain), r), nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w: the last certificate (%q) is not issued by a pinned root: %v", ErrChainOrder, last.Subject.CommonName, errs)
}

// PathRules checks the CA rules of a path from IssuingOrder, apart from
// time: every CA (each certificate after the leaf, the root included) is
// a CA by its basic constraints, has keyCertSign if it has a key usage at
// all, no extended key usage or anyExtendedKeyUsage, and admits as many
// CAs below it as its path length constraint allows; no certificate has a
// critical extension outside knownCritical; the path has a moment when
// all of it is valid; and crypto/x509 accepts exactly this path at that
// moment (name constraints, among others). The leaf's own rules (its
// identity, usages, key) are the caller's. Errors wrap ErrChainRules.
func (b *TrustBundle) PathRules(path []*x509.Certificate) (*Path, error) {
	if len(path) < 2 {
		return nil, fmt.Errorf("%w: a path is a leaf and at least its root", ErrChainRules)
	}
	for i, c := range path {
		for _, e := range c.Extensions {
			if e.Critical && !slices.ContainsFunc(knownCritical, e.Id.Equal) {
				return nil, fmt.Errorf("%w: certificate %d (%q) has the critical extension %s", ErrChainRules, i, c.Subject.CommonName, e.Id)
			}
		}
		if i == 0 {
			continue
		}
		switch {
		case !c.BasicConstraintsValid || !c.IsCA:
			return nil, fmt.Errorf("%w: certificate %d (%q) issues certificates but is not a CA", ErrChainRules, i, c.Subject.CommonName)
		case c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0:
			return nil, fmt.Errorf("%w: CA %d (%q) lacks the keyCertSign usage", ErrChainRules, i, c.Subject.CommonName)
		case (len(c.ExtKeyUsage) > 0 || len(c.UnknownExtKeyUsage) > 0) && !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny):
			return nil, fmt.Errorf("%w: CA %d (%q) has an extended key usage other than anyExtendedKeyUsage", ErrChainRules, i, c.Subject.CommonName)
		case c.MaxPathLen >= 0 && i-1 > c.MaxPathLen:
			return nil, fmt.Errorf("%w: CA %d (%q) allows %d CAs below it, the path has %d", ErrChainRules, i, c.Subject.CommonName, c.MaxPathLen, i-1)
		}
	}
	w := pathWindow(path)
	if w.notBefore.After(w.notAfter) {
		return nil, fmt.Errorf("%w: no moment when every certificate is valid", ErrChainRules)
	}
	p := &Path{Certs: path, NotBefore: w.notBefore, NotAfter: w.notAfter}
	key := chainKey(path, pathRulesUsage)
	if _, ok := b.verified.lookup(key, w.notBefore); ok {
		return p, nil
	}
	// What crypto/x509 checks besides (name constraints above all), at a
	// moment the whole path is valid: time is the caller's concern. Any
	// extended key usage here; the leaf's own is the caller's.
	inter := x509.NewCertPool()
	for _, c := range path[1 : len(path)-1] {
		inter.AddCert(c)
	}
	chains, err := path[0].Verify(x509.VerifyOptions{
		Roots: b.pool, Intermediates: inter, CurrentTime: w.notBefore,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrChainRules, err)
	}
	if !slices.ContainsFunc(chains, func(c []*x509.Certificate) bool { return slices.Equal(c, path) }) {
		return nil, fmt.Errorf("%w: crypto/x509 accepts another path than the one presented", ErrChainRules)
	}
	b.verified.add(key, path)
	return p, nil
}

// At checks the path at the clock now with floor (nil: none), as Verify
// does: at the later of now and the floor; a path not valid yet is
// accepted (with a floor only) as proof that it is at least its NotBefore,
// and the floor is raised to it. An expired path is refused with
// ErrExpired.
func (p *Path) At(now time.Time, floor *Floor) error {
	at := floor.At(now)
	switch {
	case at.After(p.NotAfter):
		return fmt.Errorf("%w: the path is valid %s to %s, checked at %s", ErrExpired,
			p.NotBefore.UTC().Format(time.RFC3339), p.NotAfter.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	case at.Before(p.NotBefore) && floor == nil:
		return fmt.Errorf("%w: the path is valid from %s, checked at %s", ErrExpired,
			p.NotBefore.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
	_ = floor.Raise(p.NotBefore) // persisting is the floor's owner's concern
	return nil
}

// Covers reports whether every certificate of the path is valid at t.
func (p *Path) Covers(t time.Time) bool {
	return !t.Before(p.NotBefore) && !t.After(p.NotAfter)
}

// issuerMemo maps chains IssuingOrder accepted to the root that ends them;
// bounded like verifiedChains.
type issuerMemo struct {
	mu sync.Mutex
	m  map[[32]byte]*x509.Certificate
}

func (m *issuerMemo) get(key [32]byte) (*x509.Certificate, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.m[key]
	return r, ok
}

func (m *issuerMemo) put(key [32]byte, root *x509.Certificate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.m) >= maxVerifiedChains {
		clear(m.m)
	}
	m.m[key] = root
}
