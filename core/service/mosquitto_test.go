package service_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
	"github.com/fleetprov/prov/pki/deployment"
	"github.com/fleetprov/prov/pki/pkitest"
)

// The tests of docs/mosquitto.md: Mosquitto runs on the page's own
// configuration (coretest.Mosquitto reads it from the page), core publishes
// to it with its certificate, and clients with each kind of certificate try
// what the page says they can and cannot do.

// What the page says Mosquitto answers (MQTT 5 reason codes).
const (
	grantedQoS1   = 0x01 // SUBACK: the ACL file does not check subscriptions
	notAuthorized = 0x87 // PUBACK to a publish the ACL drops
)

// withMosquitto is Mosquitto as docs/mosquitto.md configures it, core
// publishing to it, and two devices whose registrations core published.
type withMosquitto struct {
	core *coretest.Core
	addr string // the broker's
	a, b *coreapi.Device
}

func startWithMosquitto(t *testing.T, a, b int) *withMosquitto {
	t.Helper()
	c := catest.Shared(t)
	dir := t.TempDir()
	port := coretest.Mosquitto(t, c, "127.0.0.1")
	core := coretest.Run(t, c, coretest.Config(t, c.Deployment, dir,
		fmt.Sprintf("mqtt: {embedded: {listen: \"\"}, external: {url: \"tls://localhost:%d\"}}\n", port)), dir)
	m := &withMosquitto{core: core, addr: fmt.Sprintf("127.0.0.1:%d", port),
		a: core.Register(t, "rpi4", coretest.RPi4(a)), b: core.Register(t, "rpi4", coretest.RPi4(b))}
	registrationsPublished(t, core)
	return m
}

// change makes an admin change d's data: a new generation, notified.
func (m *withMosquitto) change(t *testing.T, d *coreapi.Device) {
	t.Helper()
	if _, err := m.core.Client(t, m.core.Admin(t)).SetDeviceData(ctx, d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/x": "1"}}); err != nil {
		t.Fatal(err)
	}
}

// Finding 7 of issue 13: with the documented configuration core's
// notifications reach the device's own subscription (before, Mosquitto
// denied core's publishes); a device reads nothing of another device's, by
// name or by wildcard, and cannot publish.
func TestMosquittoAsDocumented(t *testing.T) {
	m := startWithMosquitto(t, 51, 52)
	a, b := m.a, m.b
	devA := m.dialDevice(t, a.Serial, "prov-device-"+a.Serial)
	devB := m.dialDevice(t, b.Serial, "prov-device-"+b.Serial)
	for _, d := range []struct {
		c   *rawMQTT
		dev *coreapi.Device
	}{{devA, a}, {devB, b}} {
		if code := d.c.subscribe(t, coreapi.DeviceTopic(d.dev.Serial)); code != grantedQoS1 {
			t.Fatalf("%s subscribing to its own topic: reason %#x", d.dev.Serial, code)
		}
		d.c.want(t, d.dev.Serial, d.dev.Generation)
	}
	// Another device's topic and wildcards: granted, as the page says,
	// and then filtered at delivery.
	for _, topic := range []string{coreapi.DeviceTopic(b.Serial), coreapi.TopicPrefix + "+", "prov/#", "#", "$SYS/#"} {
		if code := devA.subscribe(t, topic); code != grantedQoS1 {
			t.Errorf("a device subscribing to %s: reason %#x; docs/mosquitto.md says Mosquitto grants it (%#x)", topic, code, grantedQoS1)
		}
	}
	devA.nothingBut(t, a.Serial) // b's retained notification did not come

	m.change(t, b)
	m.change(t, a)
	devB.want(t, b.Serial, b.Generation+1)
	devA.want(t, a.Serial, a.Generation+1)
	devA.nothingBut(t, a.Serial) // b's new generation did not come

	// A device cannot publish, to another's topic or its own.
	for _, topic := range []string{coreapi.DeviceTopic(b.Serial), coreapi.DeviceTopic(a.Serial)} {
		if code := devA.publish(t, topic, `{"serial":"`+b.Serial+`","generation":99}`); code != notAuthorized {
			t.Errorf("a device publishing to %s: reason %#x; docs/mosquitto.md says %#x", topic, code, notAuthorized)
		}
	}
	devB.nothing(t)
	devA.nothingBut(t, a.Serial)
	if n := notificationMetric(t, m.core.HTTP(t, nil), m.core.URL, "failed"); n != 0 {
		t.Fatalf("core counted %v failed notifications", n)
	}
}

// Finding 7: Mosquitto cannot refuse a proxy's or an admin's certificate
// as the embedded broker does; as configured, those (and the broker's own)
// read and write nothing. The signer's certificate, another PKI's and no
// certificate do not connect.
func TestMosquittoOtherIdentities(t *testing.T) {
	m := startWithMosquitto(t, 53, 56)
	core, d, other := m.core, m.a, m.b
	dev := m.dialDevice(t, d.Serial, d.Serial)
	dev.subscribe(t, coreapi.DeviceTopic(d.Serial))
	dev.want(t, d.Serial, d.Generation)

	type outsider struct {
		cn   string
		cert *tls.Certificate
		c    *rawMQTT
	}
	outsiders := []*outsider{
		{cn: "admin/" + deployment.DefaultAdminName, cert: core.Admin(t)},
		{cn: "proxy/" + catest.Proxy, cert: core.Proxy(t)},
		{cn: "core/" + coretest.BrokerName, cert: core.ServiceCert(t, pki.RoleCore, coretest.BrokerName)},
		// The signer carries clientAuth, to renew itself at step-ca.
		{cn: "signer/" + deployment.DefaultSignerName, cert: core.ServiceCert(t, pki.RoleSigner, deployment.DefaultSignerName)},
	}
	for _, o := range outsiders {
		var code byte
		var err error
		o.c, code, err = dialRaw(m.addr, deviceTLS(t, core.CA, o.cert), "o-"+o.cn)
		if err != nil || code != 0 {
			t.Fatalf("%s: %v, CONNACK %#x; docs/mosquitto.md says Mosquitto lets it connect", o.cn, err, code)
		}
		t.Cleanup(o.c.close)
		// Everything, a device's topic, and the one its CN's pattern
		// grants.
		for _, topic := range []string{"#", coreapi.DeviceTopic(other.Serial), coreapi.TopicPrefix + o.cn} {
			if code := o.c.subscribe(t, topic); code != grantedQoS1 {
				t.Errorf("%s subscribing to %s: reason %#x; docs/mosquitto.md says Mosquitto grants it (%#x)", o.cn, topic, code, grantedQoS1)
			}
		}
	}
	m.change(t, d)
	dev.want(t, d.Serial, d.Generation+1)
	for _, o := range outsiders {
		o.c.nothing(t) // neither the retained notification nor the new one
		for _, topic := range []string{coreapi.DeviceTopic(d.Serial), coreapi.TopicPrefix + o.cn} {
			if code := o.c.publish(t, topic, `{"serial":"`+d.Serial+`","generation":99}`); code != notAuthorized {
				t.Errorf("%s publishing to %s: reason %#x; docs/mosquitto.md says %#x", o.cn, topic, code, notAuthorized)
			}
		}
	}
	dev.nothing(t)
	for _, o := range outsiders {
		o.c.nothing(t)
	}

	foreign := pkitest.NewCA(t, catest.TrustDomain).TLSCert(t, pkitest.LeafSpec{CN: d.Serial, URIs: []string{"spiffe://" + catest.TrustDomain + "/device/" + d.Serial}})
	noCert := deviceTLS(t, core.CA, nil)
	noCert.GetClientCertificate = nil
	for name, cfg := range map[string]*tls.Config{
		"another PKI's device": deviceTLS(t, core.CA, &foreign),
		"no certificate":       noCert,
	} {
		o, code, err := dialRaw(m.addr, cfg, "refused")
		if err == nil {
			o.close()
			t.Errorf("%s connected (CONNACK %#x)", name, code)
			continue
		}
		// Not a DISCONNECT after CONNECT: the TLS handshake failed.
		if d := (*disconnected)(nil); errors.As(err, &d) || isTimeout(err) {
			t.Errorf("%s: %v; docs/mosquitto.md says the TLS handshake fails", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

// Finding 4 at the external broker: Mosquitto takes the client ID from the
// certificate's CN, so a device that uses another's client ID does not
// knock it off; a second connection of the same device replaces its first.
func TestMosquittoClientIDs(t *testing.T) {
	m := startWithMosquitto(t, 54, 55)
	a, b := m.a, m.b
	devB := m.dialDevice(t, b.Serial, "prov-device-"+b.Serial)
	devB.subscribe(t, coreapi.DeviceTopic(b.Serial))
	devB.want(t, b.Serial, b.Generation)

	var thieves []*rawMQTT
	for _, id := range []string{"prov-device-" + b.Serial, b.Serial} {
		thieves = append(thieves, m.dialDevice(t, a.Serial, id))
		if err := devB.sync(); err != nil {
			t.Fatalf("device %s with client ID %s knocked %s off: %v", a.Serial, id, b.Serial, err)
		}
	}
	// The first thief's session was a's own; the second replaced it.
	if err := thieves[0].sync(); err == nil || isTimeout(err) {
		t.Fatalf("a second connection of %s left the first one open (%v): the client ID is not the CN", a.Serial, err)
	}
	m.change(t, b)
	devB.want(t, b.Serial, b.Generation+1)
	thieves[1].nothing(t)
}

// dialDevice connects to the broker with a new certificate for serial, as
// clientID.
func (m *withMosquitto) dialDevice(t *testing.T, serial, clientID string) *rawMQTT {
	t.Helper()
	c, code, err := dialRaw(m.addr, deviceTLS(t, m.core.CA, coretest.DeviceCert(t, m.core.CA, serial, 0)), clientID)
	if err != nil || code != 0 {
		t.Fatalf("device %s to the broker: %v, CONNACK %#x", serial, err, code)
	}
	t.Cleanup(c.close)
	return c
}

// rawMQTT is an MQTT 5 client that reads the broker's packets in order, in
// the test's goroutine. A broker writes to one connection in order, so
// once the answer to a PINGREQ has come, every message it had queued for
// this client before has come too: "nothing was delivered" is a fact
// checked, not a timeout waited out.
type rawMQTT struct {
	conn net.Conn
	id   uint16
	got  []*packets.Publish // delivered, not yet looked at
}

// readWait bounds the wait for an answer the broker owes.
const readWait = 15 * time.Second

// disconnected is the broker's DISCONNECT, with its reason code.
type disconnected struct{ reason byte }

func (d *disconnected) Error() string {
	return fmt.Sprintf("the broker disconnected (reason %#x)", d.reason)
}

// isTimeout: the broker did not answer in readWait, as opposed to closing
// the connection.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dialRaw connects over TLS and sends CONNECT with a clean start; it
// returns the CONNACK's reason code, or an error if the broker refused the
// handshake or closed the connection.
func dialRaw(addr string, cfg *tls.Config, clientID string) (*rawMQTT, byte, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: readWait}, "tcp", addr, cfg)
	if err != nil {
		return nil, 0, err
	}
	c := &rawMQTT{conn: conn}
	connect := packets.NewControlPacket(packets.CONNECT)
	cp, ok := connect.Content.(*packets.Connect)
	if !ok {
		return nil, 0, errors.New("paho: CONNECT is not a *packets.Connect")
	}
	cp.ClientID, cp.CleanStart, cp.KeepAlive = clientID, true, 60
	p, err := c.ask(cp, packets.CONNACK)
	if err != nil {
		c.close()
		return nil, 0, err
	}
	ack, _ := p.Content.(*packets.Connack)
	return c, ack.ReasonCode, nil
}

func (c *rawMQTT) close() { _ = c.conn.Close() }

// read reads packets until one of type want. It keeps every message in
// got (acknowledging those sent with QoS 1), the one it waited for too.
func (c *rawMQTT) read(want byte) (*packets.ControlPacket, error) {
	for {
		if err := c.conn.SetReadDeadline(time.Now().Add(readWait)); err != nil {
			return nil, err
		}
		p, err := packets.ReadPacket(c.conn)
		if err != nil {
			return nil, fmt.Errorf("waiting for %s: %w", packets.NewControlPacket(want).PacketType(), err)
		}
		switch p.Type {
		case packets.PUBLISH:
			pub, _ := p.Content.(*packets.Publish)
			c.got = append(c.got, pub)
			if pub.QoS > 0 {
				if _, err := (&packets.Puback{PacketID: pub.PacketID, Properties: &packets.Properties{}}).WriteTo(c.conn); err != nil {
					return nil, err
				}
			}
			if want == packets.PUBLISH {
				return p, nil
			}
		case want:
			return p, nil
		case packets.DISCONNECT:
			d, _ := p.Content.(*packets.Disconnect)
			return nil, &disconnected{reason: d.ReasonCode}
		}
	}
}

func (c *rawMQTT) nextID() uint16 { c.id++; return c.id }

// ask writes pkt and reads until the broker's answer of type want.
func (c *rawMQTT) ask(pkt io.WriterTo, want byte) (*packets.ControlPacket, error) {
	if _, err := pkt.WriteTo(c.conn); err != nil {
		return nil, err
	}
	return c.read(want)
}

// subscribe subscribes to topic with QoS 1 and returns the SUBACK's reason.
func (c *rawMQTT) subscribe(t *testing.T, topic string) byte {
	t.Helper()
	s := &packets.Subscribe{PacketID: c.nextID(), Properties: &packets.Properties{}, Subscriptions: []packets.SubOptions{{Topic: topic, QoS: 1}}}
	p, err := c.ask(s, packets.SUBACK)
	if err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	ack, _ := p.Content.(*packets.Suback)
	return ack.Reasons[0]
}

// publish publishes payload on topic with QoS 1 and returns the PUBACK's
// reason.
func (c *rawMQTT) publish(t *testing.T, topic, payload string) byte {
	t.Helper()
	pub := &packets.Publish{PacketID: c.nextID(), QoS: 1, Topic: topic, Payload: []byte(payload), Properties: &packets.Properties{}}
	p, err := c.ask(pub, packets.PUBACK)
	if err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
	ack, _ := p.Content.(*packets.Puback)
	return ack.ReasonCode
}

// sync sends PINGREQ and waits for its answer: after it, got holds every
// message the broker had queued for this client before.
func (c *rawMQTT) sync() error {
	_, err := c.ask(packets.NewControlPacket(packets.PINGREQ), packets.PINGRESP)
	return err
}

// want waits for the notification of serial's generation; other
// notifications of serial may come first (a retained one, a subscription
// that overlaps another), another device's may not.
func (c *rawMQTT) want(t *testing.T, serial string, generation uint64) {
	t.Helper()
	for {
		for len(c.got) > 0 {
			p := c.got[0]
			c.got = c.got[1:]
			n := notification(t, p)
			if n.Serial != serial || p.Topic != coreapi.DeviceTopic(serial) {
				t.Fatalf("waiting for %s's generation %d, got %+v on %s", serial, generation, n, p.Topic)
			}
			if n.Generation == generation {
				return
			}
		}
		if _, err := c.read(packets.PUBLISH); err != nil {
			t.Fatalf("waiting for %s's generation %d: %v", serial, generation, err)
		}
	}
}

// nothingBut checks, after a sync, that every message delivered since the
// last look was a notification of serial's on its own topic.
func (c *rawMQTT) nothingBut(t *testing.T, serial string) {
	t.Helper()
	if err := c.sync(); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.got {
		if n := notification(t, p); p.Topic != coreapi.DeviceTopic(serial) || n.Serial != serial || n.Generation == 99 {
			t.Errorf("delivered to %s: %s on %s", serial, p.Payload, p.Topic)
		}
	}
	c.got = nil
}

// nothing checks, after a sync, that no message was delivered since the
// last look.
func (c *rawMQTT) nothing(t *testing.T) {
	t.Helper()
	if err := c.sync(); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.got {
		t.Errorf("delivered: %s on %s", p.Payload, p.Topic)
	}
	c.got = nil
}

func notification(t *testing.T, p *packets.Publish) coreapi.Notification {
	t.Helper()
	var n coreapi.Notification
	if err := json.Unmarshal(p.Payload, &n); err != nil {
		t.Fatalf("notification %q on %s: %v", p.Payload, p.Topic, err)
	}
	return n
}
