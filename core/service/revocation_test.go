package service_test

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/token"
)

func caSection(c *catest.CA) string { return caSectionAt(c, c.CAURL) }

// caSectionAt is caSection with core reaching the CA at url.
func caSectionAt(c *catest.CA, url string) string {
	core := deployment.DefaultCoreName
	return "ca:\n  url: \"" + url + "\"\n  crlInterval: 200ms\n  revokerKey: \"" + c.CoreRevokerKey(core) +
		"\"\n  revokerPasswordFile: \"" + c.CoreRevokerPassword(core) + "\"\n"
}

// An admin certificate revoked at the CA (prov-pki revoke) is refused by
// core once its CRL poll sees it.
func TestCARevocationReachesCore(t *testing.T) {
	c := catest.Shared(t)
	core := coretest.Start(t, caSection(c))
	admin, err := c.AdminProvisioner(catest.Password)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := c.IssueIdentity(ctx, c.Client, admin, deployment.IdentityRequest{Role: pki.RoleAdmin, Name: "bob-crl", Replace: true}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bobCert := core.ServiceCert(t, pki.RoleAdmin, "bob-crl")
	if _, err := core.Client(t, bobCert).List(ctx, "", 1); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	revokeAtCA(t, c, admin, bob.Leaf)
	if err := testenv.WaitFor(10*time.Second, func() error {
		// A new connection each time: the revoked certificate must fail the
		// handshake.
		_, err := core.Client(t, bobCert).List(ctx, "", 1)
		var se *coreapi.StatusError
		switch {
		case err == nil:
			return errors.New("core still accepts a certificate revoked at the CA")
		case errors.As(err, &se):
			return fmt.Errorf("core still accepts a certificate revoked at the CA: %w", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// revokeAtCA revokes a certificate at step-ca directly with the admin
// provisioner, as prov-pki revoke does.
func revokeAtCA(t *testing.T, c *catest.CA, admin *token.Provisioner, cert *x509.Certificate) {
	t.Helper()
	serial := cert.SerialNumber.String()
	tok, err := admin.RevokeToken(c.Client.RevokeAudience(), serial, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Revoke(ctx, serial, tok, "test"); err != nil {
		t.Fatal(err)
	}
}

// Revoking a device at core also revokes, at the CA, the certificates core
// has seen it use (with core's revoke-only provisioner).
func TestDeviceRevocationReachesTheCA(t *testing.T) {
	c := catest.Shared(t)
	core := coretest.Start(t, caSection(c))
	d := core.Register(t, "rpi4", coretest.RPi4(61))
	cert := core.Enrolled(t, d.Serial, 0)
	if _, err := core.Client(t, cert).Device(ctx, d.Serial); err != nil {
		t.Fatal(err)
	}
	if _, err := core.Client(t, core.Admin(t)).Revoke(ctx, d.Serial, "lost in transit"); err != nil {
		t.Fatal(err)
	}
	if ok, serials := c.Revoked(t, cert.Leaf); !ok {
		t.Fatalf("the device's certificate %s is not on the CA's CRL: %s", cert.Leaf.SerialNumber, strings.Join(serials, " "))
	}
}
