package service

import (
	"crypto/x509"
	"fmt"

	"github.com/fleetprov/prov/internal/renewal"
	"github.com/fleetprov/prov/pki"
)

// newRenewal watches core's own certificates, its TLS pair and the image
// signer's, and with renewal on renews each at step-ca before it ends
// (internal/renewal). The TLS pair is the one the API's and the broker's
// listeners and the external-broker publisher read at every handshake, so
// a renewed pair is in use at once; a renewed signer signs every bundle
// built from then on.
func (c *core) newRenewal() error {
	signerPair, err := pki.LoadKeyPair(c.cfg.Signer.Cert, c.cfg.Signer.Key)
	if err != nil {
		return fmt.Errorf("signer: %w", err)
	}
	c.renewer = renewal.New(c.cfg.Renewal, []renewal.Cert{
		{Name: "tls", Role: pki.RoleCore, KeyPair: c.self.KeyPair, CertFile: c.cfg.TLS.Cert},
		{Name: "signer", Role: pki.RoleSigner, KeyPair: signerPair, CertFile: c.cfg.Signer.Cert, Installed: c.signerRenewed},
	}, renewal.Options{Namespace: "prov_core", CAURL: c.cfg.CA.URL, Roots: c.self.Roots, Log: c.log})
	c.metrics.MustRegister(c.renewer.Collectors()...)
	return nil
}

// signerRenewed signs with the renewed chain (the key is the same) from
// now on, and drops the bundles the old chain signed.
func (c *core) signerRenewed(chain []*x509.Certificate) error {
	s, err := c.signer.WithChain(chain)
	if err != nil {
		return err
	}
	c.bundles.SetSigner(s)
	return nil
}
