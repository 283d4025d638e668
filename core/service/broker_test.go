package service_test

import (
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
)

// MQTT v5 reason codes the embedded broker refuses with.
const (
	reasonClientIDNotValid = 0x85
	reasonNotAuthorized    = 0x87
)

// Finding 2: a device revoked by an admin had CONNACK 0, SUBACK 0 and its
// retained message on a new connection, and its open subscription stayed.
// Now its open session is closed at once and a new connection is refused.
func TestBrokerRefusesARevokedDevice(t *testing.T) {
	core := coretest.Start(t, "")
	d := core.Register(t, "rpi4", coretest.RPi4(71))
	core.Register(t, "rpi4", coretest.RPi4(72))
	registrationsPublished(t, core)
	tlsCfg := deviceTLS(t, core.CA, core.Enrolled(t, d.Serial, 0))
	m, err := dialMQTT(t, core.MQTTAddr, tlsCfg, coreapi.DeviceClientID(d.Serial))
	if err != nil {
		t.Fatal(err)
	}
	if code := m.subscribe(t, coreapi.DeviceTopic(d.Serial)); code > 2 {
		t.Fatalf("subscribe before the revoke: reason %#x", code)
	}
	m.registration(t, d)

	if _, err := core.Client(t, core.Admin(t)).Revoke(ctx, d.Serial, "stolen"); err != nil {
		t.Fatal(err)
	}
	if !m.closedWithin(10 * time.Second) {
		t.Fatal("the revoked device's open session was not closed")
	}
	if _, err := dialMQTT(t, core.MQTTAddr, tlsCfg, coreapi.DeviceClientID(d.Serial)); !refusedWith(err, reasonNotAuthorized) {
		t.Fatalf("a new connection of the revoked device: %v, want CONNACK %#x", err, reasonNotAuthorized)
	}
}

// Finding 2, the CA's side: a certificate revoked at step-ca directly
// (prov-pki revoke), a device's or a service's, was still accepted by the
// broker. Within one CRL poll (200 ms here) its open session is closed
// and a new handshake fails.
func TestBrokerRefusesCertificatesRevokedAtTheCA(t *testing.T) {
	c := catest.Shared(t)
	core := coretest.Start(t, caSection(c))
	d := core.Register(t, "rpi4", coretest.RPi4(73))
	devCert := core.Enrolled(t, d.Serial, 0)
	admin, err := c.AdminProvisioner(catest.Password)
	if err != nil {
		t.Fatal(err)
	}
	// Another core's identity, such as a replica's publisher.
	if _, err := c.IssueIdentity(ctx, c.Client, admin, deployment.IdentityRequest{Role: pki.RoleCore, Name: "core-crl", Replace: true}, time.Now()); err != nil {
		t.Fatal(err)
	}
	svcCert := core.ServiceCert(t, pki.RoleCore, "core-crl")
	dev, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, c, devCert), coreapi.DeviceClientID(d.Serial))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, c, svcCert), "prov-core-crl")
	if err != nil {
		t.Fatal(err)
	}
	revokeAtCA(t, c, admin, devCert.Leaf)
	revokeAtCA(t, c, admin, svcCert.Leaf)
	for name, m := range map[string]*mqttClient{"device": dev, "core": svc} {
		if !m.closedWithin(10 * time.Second) {
			t.Errorf("the %s's open session outlived its certificate's revocation at the CA", name)
		}
	}
	for name, cfg := range map[string]struct {
		cert *tls.Certificate
		id   string
	}{"device": {devCert, coreapi.DeviceClientID(d.Serial)}, "core": {svcCert, "prov-core-crl"}} {
		if _, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, c, cfg.cert), cfg.id); err == nil {
			t.Errorf("the %s connected with a certificate revoked at the CA", name)
		}
	}
}

// Finding 4: device A connected with device B's client ID and the broker
// took over B's session (B disconnected with reason 142). Now a device
// connects with its own client ID only; B keeps its session.
func TestClientIDBoundToTheCertificate(t *testing.T) {
	core := coretest.Start(t, "")
	a := core.Register(t, "rpi4", coretest.RPi4(74))
	b := core.Register(t, "rpi4", coretest.RPi4(75))
	registrationsPublished(t, core)
	tlsA := deviceTLS(t, core.CA, core.Enrolled(t, a.Serial, 0))
	mb, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, core.CA, core.Enrolled(t, b.Serial, 0)), coreapi.DeviceClientID(b.Serial))
	if err != nil {
		t.Fatal(err)
	}
	mb.subscribe(t, coreapi.DeviceTopic(b.Serial))
	mb.registration(t, b)

	for _, id := range []string{coreapi.DeviceClientID(b.Serial), b.Serial, "", "prov-core"} {
		if _, err := dialMQTT(t, core.MQTTAddr, tlsA, id); !refusedWith(err, reasonClientIDNotValid) {
			t.Errorf("device A with client ID %q: %v, want CONNACK %#x", id, err, reasonClientIDNotValid)
		}
	}
	select {
	case <-mb.gone:
		t.Fatal("B's session was taken over")
	default:
	}
	// B's session is whole: it hears of its next generation.
	if _, err := core.Client(t, core.Admin(t)).SetDeviceData(ctx, b.Serial, b.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/x": "1"}}); err != nil {
		t.Fatal(err)
	}
	if n := mb.next(t, 10*time.Second); n == nil || n.Serial != b.Serial || n.Generation != b.Generation+1 {
		t.Fatalf("B after A's attempts: %+v", n)
	}
	if _, err := dialMQTT(t, core.MQTTAddr, tlsA, coreapi.DeviceClientID(a.Serial)); err != nil {
		t.Fatalf("device A with its own client ID: %v", err)
	}
	// Nor may a core identity use a device's client ID.
	if _, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, core.CA, core.ServiceCert(t, pki.RoleCore, deployment.DefaultCoreName)),
		coreapi.DeviceClientID(b.Serial)); !refusedWith(err, reasonClientIDNotValid) {
		t.Errorf("core with a device's client ID: %v", err)
	}
}

// Finding 3: a stolen proxy provisioner key minted a certificate for an
// enrolled serial with the attacker's own key, and core served that
// device's bundle (200). Core pins the keys the proxy recorded: the API
// refuses it with key_not_enrolled, the broker with "not authorized",
// both count it, and the device's audit trail names it.
func TestStolenProvisionerKeyCannotImpersonateADevice(t *testing.T) {
	c := catest.Shared(t)
	core := coretest.Start(t, "")
	d := core.Register(t, "rpi4", coretest.RPi4(76))
	enrolled := core.Enrolled(t, d.Serial, 0)
	// The attacker: the proxy's provisioner key from the test PKI, a token
	// for the enrolled serial, and the real step-ca signing the attacker's
	// own key.
	rogue := coretest.DeviceCert(t, c, d.Serial, 0)

	_, _, err := core.Client(t, rogue).Bundle(ctx, d.Serial, "")
	var se *coreapi.StatusError
	if !errors.As(err, &se) || se.Status != 403 || se.Body.Code != coreapi.CodeKeyNotEnrolled {
		t.Fatalf("the bundle with a minted certificate: %v, want 403 %s", err, coreapi.CodeKeyNotEnrolled)
	}
	body, _, err := core.Client(t, enrolled).Bundle(ctx, d.Serial, "")
	if err != nil {
		t.Fatalf("the enrolled device: %v", err)
	}
	_ = body.Close()
	if _, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, c, rogue), coreapi.DeviceClientID(d.Serial)); !refusedWith(err, reasonNotAuthorized) {
		t.Fatalf("the broker with a minted certificate: %v, want CONNACK %#x", err, reasonNotAuthorized)
	}
	events, err := core.Client(t, core.Admin(t)).DeviceAudit(ctx, d.Serial, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range events {
		found = found || (e.Action == "key not enrolled: possible key compromise" && e.Detail["serial"] == rogue.Leaf.SerialNumber.String())
	}
	if !found {
		t.Fatalf("no possible key compromise in the audit trail: %+v", events)
	}
	hc := core.HTTP(t, nil)
	for _, via := range []string{"api", "mqtt"} {
		if n := metric(t, hc, core.URL, `prov_core_key_mismatch_total{via="`+via+`"}`); n < 1 {
			t.Errorf("prov_core_key_mismatch_total{via=%q} = %v", via, n)
		}
	}
}
