package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/stepca"
)

// RenewDue is when the certificate should be renewed: after RenewAt of its
// life.
func (a *Agent) RenewDue() time.Time {
	leaf := a.kp.Leaf()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(life) * a.o.RenewAt))
}

// Expiry is the certificate's end.
func (a *Agent) Expiry() time.Time { return a.kp.Leaf().NotAfter }

// Renew renews the device certificate at step-ca (POST /1.0/renew, mTLS
// with the current certificate; same key, same identity), checks the new
// chain, and stores it.
func (a *Agent) Renew(ctx context.Context) error {
	if now := a.effectiveNow(); !now.Before(a.Expiry()) {
		return a.fail(fmt.Errorf("%w at %s: step-ca renews only a valid certificate; enroll this device again at a factory proxy",
			ErrCertExpired, a.Expiry().UTC().Format(time.RFC3339)))
	}
	ctx, cancel := context.WithTimeout(ctx, a.o.DownloadTimeout)
	defer cancel()
	// step-ca's own TLS certificate is from our root but names only its
	// host, not a role: the host name check is what identifies it.
	ca, err := stepca.New(a.dev.CAURL, a.roots, stepca.WithClientCertificate(a.kp), stepca.WithClock(a.o.Install.Now, a.o.Install.Floor))
	if err != nil {
		return a.fail(fmt.Errorf("%s: %w", a.st.File(state.DeviceFile), err))
	}
	chain, err := ca.Renew(ctx)
	if err != nil {
		return a.fail(fmt.Errorf("renew at %s: %w", a.dev.CAURL, err))
	}
	if err := a.checkRenewed(chain); err != nil {
		return a.fail(err)
	}
	var out bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if err := a.store(out.Bytes()); err != nil {
		return a.fail(err)
	}
	a.log.Info("certificate renewed", "not_after", chain[0].NotAfter.UTC(), "renew_due", a.RenewDue().UTC())
	return nil
}

// checkRenewed accepts only this device's identity, for its own key.
func (a *Agent) checkRenewed(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return fmt.Errorf("renew: an empty chain")
	}
	want, err := pki.DeviceIdentity(a.roots.TrustDomain(), a.dev.Serial)
	if err != nil {
		return err
	}
	got, err := a.roots.Verify(chain, pki.VerifyOptions{Time: a.now(), Floor: a.o.Install.Floor, KeyUsage: x509.ExtKeyUsageClientAuth, Roles: []pki.Role{pki.RoleDevice}})
	if err != nil {
		return fmt.Errorf("renew: the new certificate: %w", err)
	}
	if got != want {
		return fmt.Errorf("renew: the new certificate is for %s, not %s", got, want)
	}
	if !bytes.Equal(chain[0].RawSubjectPublicKeyInfo, a.kp.Leaf().RawSubjectPublicKeyInfo) {
		return fmt.Errorf("renew: the new certificate is for another key")
	}
	return nil
}

// store replaces the certificate file and the one in use.
func (a *Agent) store(chainPEM []byte) error {
	unlock, err := a.st.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := a.st.WriteFile(state.CertFile, chainPEM, 0o644); err != nil {
		return err
	}
	return a.kp.Reload()
}
