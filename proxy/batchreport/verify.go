package batchreport

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"

	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/proxy/auditlog"
)

// Verified is what Verify established about a report.
type Verified struct {
	Report *Report      // the header (and, for JSON, the boards)
	Signer pki.Identity // a proxy of the bundle's deployment
}

// Verify checks a report file's bytes against its detached signature and
// the signer's chain (PEM, leaf first): the signature with the leaf's key,
// then the chain to the deployment's root at the report's export time, and
// that the leaf is a proxy identity. The export time is signed, so a
// proxy certificate that has since expired (they are short-lived and
// renewed) still vouches for what it signed while valid; revocation is not
// checked here.
func Verify(data, sig, chainPEM []byte, bundle *pki.TrustBundle) (*Verified, error) {
	chain, err := pki.ParseCertificates(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("the signer's chain: %w", err)
	}
	pub, ok := chain[0].PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%w: the signer's key is a %T", ErrBadSignature, chain[0].PublicKey)
	}
	sum := sha256.Sum256(data)
	if !ecdsa.VerifyASN1(pub, sum[:], sig) {
		return nil, ErrBadSignature
	}
	r, err := Parse(data)
	if err != nil {
		return nil, err
	}
	id, err := bundle.Verify(chain, pki.VerifyOptions{Time: r.ExportedAt, KeyUsage: pki.RoleProxy.ExtKeyUsage(), Roles: []pki.Role{pki.RoleProxy}})
	if err != nil {
		return nil, fmt.Errorf("the signer's certificate: %w", err)
	}
	return &Verified{Report: r, Signer: id}, nil
}

// CheckHead checks that the factory record at path, whose chain must
// verify, still holds head: entry head.Entries has hash head.Hash. Entries
// appended since the export are fine.
func CheckHead(path string, head Head) error {
	found := head.Entries == 0 && head.Hash == auditlog.Genesis
	err := auditlog.Read(path, func(r auditlog.Record) error {
		if r.Seq == head.Entries {
			found = r.Hash == head.Hash
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("factory record %s: %w", path, err)
	}
	if !found {
		return fmt.Errorf("%w: entry %d with hash %s", ErrHeadMismatch, head.Entries, head.Hash)
	}
	return nil
}
