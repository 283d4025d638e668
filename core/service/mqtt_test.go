package service_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/ca/catest"
)

// mqttClient connects to a broker over TLS with cert, as a device would.
type mqttClient struct {
	c    *paho.Client
	msgs chan *paho.Publish
	gone chan struct{} // closed when the broker ends the connection
}

// refused is a CONNACK that refuses the connection.
type refused struct{ code byte }

func (r *refused) Error() string { return fmt.Sprintf("connack reason %#x", r.code) }

// refusedWith reports whether err is a CONNACK refusal with reason code.
func refusedWith(err error, code byte) bool {
	var r *refused
	return errors.As(err, &r) && r.code == code
}

// closedByBroker: the broker closed the connection before answering
// CONNECT, as it does after a handshake whose client certificate it
// refused (TLS 1.3: the client's handshake ends first).
func closedByBroker(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)
}

func dialMQTT(t *testing.T, addr string, tlsCfg *tls.Config, clientID string) (*mqttClient, error) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tlsCfg)
	if err != nil {
		return nil, err
	}
	m := &mqttClient{msgs: make(chan *paho.Publish, 16), gone: make(chan struct{})}
	var once sync.Once
	gone := func() { once.Do(func() { close(m.gone) }) }
	// paho writes a packet in several Write calls; without a lock, a PUBACK
	// from the reader goroutine can interleave with a SUBSCRIBE and the
	// broker drops us for a malformed packet (autopaho wraps its own).
	m.c = paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn), OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) { m.msgs <- pr.Packet; return true, nil },
	}, OnServerDisconnect: func(*paho.Disconnect) { gone() }, OnClientError: func(error) { gone() }})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ca, err := m.c.Connect(cctx, &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30})
	if ca != nil && ca.ReasonCode >= 0x80 {
		_ = conn.Close()
		return nil, &refused{ca.ReasonCode}
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	t.Cleanup(func() { _ = m.c.Disconnect(&paho.Disconnect{}) })
	return m, nil
}

// closedWithin reports whether the broker ended the connection within d.
func (m *mqttClient) closedWithin(d time.Duration) bool {
	select {
	case <-m.gone:
		return true
	case <-time.After(d):
		return false
	}
}

func (m *mqttClient) subscribe(t *testing.T, topic string) byte {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sa, err := m.c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}})
	if err != nil && sa == nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	return sa.Reasons[0]
}

func (m *mqttClient) next(t *testing.T, within time.Duration) *coreapi.Notification {
	t.Helper()
	select {
	case p := <-m.msgs:
		var n coreapi.Notification
		if err := json.Unmarshal(p.Payload, &n); err != nil {
			t.Fatalf("notification %q: %v", p.Payload, err)
		}
		return &n
	case <-time.After(within):
		return nil
	}
}

// registrationsPublished waits until core has published the notifications
// of the two devices a test registered, so the broker retains them before
// the test's device subscribes and sends its own once, on subscribing.
func registrationsPublished(t *testing.T, core *coretest.Core) {
	t.Helper()
	hc := core.HTTP(t, nil)
	if err := testenv.WaitFor(15*time.Second, func() error {
		if n := published(t, hc, core.URL); n < 2 {
			return fmt.Errorf("%.0f of 2 registrations' notifications published", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// registration checks that the first message is the retained notification
// of d's registration.
func (m *mqttClient) registration(t *testing.T, d *coreapi.Device) {
	t.Helper()
	if n := m.next(t, 10*time.Second); n == nil || n.Serial != d.Serial || n.Generation != d.Generation {
		t.Fatalf("the retained notification of %s's registration: %+v", d.Serial, n)
	}
}

func deviceTLS(t testing.TB, c *catest.CA, cert *tls.Certificate) *tls.Config {
	t.Helper()
	bundle, err := pki.LoadTrustBundle(c.RootCert())
	if err != nil {
		t.Fatal(err)
	}
	cfg := pki.ClientTLSConfig(nil, bundle, pki.ClientOptions{ServerName: "localhost"})
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	return cfg
}

// The embedded broker: a device hears of its new generation on its own
// topic, and nothing else is allowed.
func TestEmbeddedBroker(t *testing.T) {
	core := coretest.Start(t, "")
	d := core.Register(t, "rpi4", coretest.RPi4(41))
	other := core.Register(t, "rpi4", coretest.RPi4(42))
	registrationsPublished(t, core)
	cert := core.Enrolled(t, d.Serial, 0)
	m, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, core.CA, cert), coreapi.DeviceClientID(d.Serial))
	if err != nil {
		t.Fatal(err)
	}
	if code := m.subscribe(t, coreapi.DeviceTopic(d.Serial)); code > 2 {
		t.Fatalf("subscribing to its own topic: reason %#x", code)
	}
	for _, topic := range []string{coreapi.DeviceTopic(other.Serial), coreapi.TopicPrefix + "+", "#", "$SYS/#"} {
		if code := m.subscribe(t, topic); code < 0x80 {
			t.Errorf("subscribed to %s (reason %#x)", topic, code)
		}
	}
	m.registration(t, d)
	admin := core.Client(t, core.Admin(t))
	if _, err := admin.SetDeviceData(ctx, d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/x": "1"}}); err != nil {
		t.Fatal(err)
	}
	n := m.next(t, 10*time.Second)
	if n == nil || n.Serial != d.Serial || n.Generation != d.Generation+1 || len(n.SHA256) != 64 {
		t.Fatalf("notification %+v", n)
	}
	// A group change reaches every member.
	g, err := admin.Group(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetGroupData(ctx, "default", g.Version, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/y": "2"}}); err != nil {
		t.Fatal(err)
	}
	if n := m.next(t, 10*time.Second); n == nil || n.Generation != d.Generation+2 {
		t.Fatalf("group change notification %+v", n)
	}
	// A device may not publish, not even to its own topic.
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pr, err := m.c.Publish(pctx, &paho.Publish{QoS: 1, Topic: coreapi.DeviceTopic(d.Serial), Payload: []byte(`{"serial":"x","generation":99}`)})
	if err == nil && pr.ReasonCode < 0x80 {
		t.Fatalf("a device published (reason %#x)", pr.ReasonCode)
	}
	// Without a certificate, or with a proxy's, no connection.
	noCert := deviceTLS(t, core.CA, cert)
	noCert.GetClientCertificate = nil
	if _, err := dialMQTT(t, core.MQTTAddr, noCert, "anon"); err == nil {
		t.Fatal("connected without a certificate")
	}
	if _, err := dialMQTT(t, core.MQTTAddr, deviceTLS(t, core.CA, core.Proxy(t)), "proxy"); err == nil {
		t.Fatal("a proxy connected to the broker")
	}
}
