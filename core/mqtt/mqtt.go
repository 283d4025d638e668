// Package mqtt carries core's update notifications: an embedded broker
// (mochi-mqtt) on a TLS listener where clients are identified only by
// their certificates from the deployment's PKI (acl.go): a device connects
// only with its own client ID, while core's registry admits it (not
// revoked, a key core recorded), and may subscribe to its own topic only;
// only core publishes; a revoked device's sessions are closed at once, and
// those of a certificate on the CA's CRL when the CRL lists it. Or a
// publisher that connects to an external broker (Mosquitto, say) with
// core's certificate.
package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// Broker is the embedded broker.
type Broker struct {
	srv          *mochi.Server
	ln           *listeners.TCP
	log          *slog.Logger
	checkRevoked func(*x509.Certificate) error
	devices      atomic.Pointer[Devices]
	serving      atomic.Bool
	latest       latest // each device topic's last notification (latest.go)
}

// NewBroker prepares a broker listening on addr with tlsCfg, which must
// require and verify client certificates of the deployment. It binds addr
// at once (port 0 takes a free port), so Addr is the bound address before
// Run, and clients that connect meanwhile wait in the listen queue.
// checkRevoked, if set, is the CA's CRL (as in tlsCfg's handshake), asked
// again once a client's session is established and by CloseRevoked.
// Devices are refused until SetDevices.
func NewBroker(addr string, tlsCfg *tls.Config, checkRevoked func(*x509.Certificate) error, log *slog.Logger) (*Broker, error) {
	if tlsCfg == nil || tlsCfg.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("mqtt broker: TLS with required client certificates is mandatory")
	}
	log = log.With("component", "mqtt")
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: log})
	b := &Broker{srv: srv, log: log, checkRevoked: checkRevoked}
	if err := srv.AddHook(&aclHook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("mqtt broker: %w", err)
	}
	if err := srv.AddHook(&latestHook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("mqtt broker: %w", err)
	}
	b.ln = listeners.NewTCP(listeners.Config{ID: "tls", Address: addr, TLSConfig: tlsCfg})
	if err := srv.AddListener(b.ln); err != nil {
		return nil, fmt.Errorf("mqtt broker on %s: %w", addr, err)
	}
	return b, nil
}

// SetDevices gives the broker core's registry, which admits devices. Core
// builds the registry after the broker (the registry's change worker
// publishes through it), and calls this before Run.
func (b *Broker) SetDevices(d Devices) { b.devices.Store(&d) }

// Addr is the address the broker listens on, with the port it bound.
func (b *Broker) Addr() string { return b.ln.Address() }

// Run serves until ctx ends.
func (b *Broker) Run(ctx context.Context) error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("mqtt broker: %w", err)
	}
	b.serving.Store(true)
	<-ctx.Done()
	b.serving.Store(false)
	if err := b.srv.Close(); err != nil {
		return fmt.Errorf("mqtt broker close: %w", err)
	}
	return nil
}

// Ready reports whether the broker serves.
func (b *Broker) Ready() error {
	if !b.serving.Load() {
		return errors.New("mqtt broker not serving")
	}
	return nil
}

// Notify publishes a notification on the device's topic, QoS 1, and keeps
// it as the topic's latest, so a device that subscribes later still learns
// of it (latest.go: as if retained, without mochi's retained store).
func (b *Broker) Notify(_ context.Context, n coreapi.Notification) error {
	payload, err := json.Marshal(n)
	if err != nil {
		return err
	}
	topic := coreapi.DeviceTopic(n.Serial)
	b.latest.put(topic, payload) // before publishing: a subscriber in between gets it one way or the other
	if err := b.srv.Publish(topic, payload, false, 1); err != nil {
		return fmt.Errorf("publish to %s: %w", coreapi.DeviceTopic(n.Serial), err)
	}
	return nil
}

// External publishes to an external broker (tls:// or mqtts:// URL) with
// core's certificate, reconnecting as needed.
type External struct {
	cm  *autopaho.ConnectionManager
	log *slog.Logger
}

// NewExternal connects to an external broker; it keeps reconnecting until
// ctx ends.
func NewExternal(ctx context.Context, brokerURL, clientID string, tlsCfg *tls.Config, log *slog.Logger) (*External, error) {
	u, err := url.Parse(brokerURL)
	if err != nil || (u.Scheme != "tls" && u.Scheme != "mqtts" && u.Scheme != "ssl") || u.Host == "" {
		return nil, fmt.Errorf("mqtt external broker %q: want tls://host:port", brokerURL)
	}
	if u.Scheme != "tls" {
		u.Scheme = "tls" // autopaho's name for MQTT over TLS
	}
	log = log.With("component", "mqtt")
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		TlsCfg:                        tlsCfg,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff:              func(n int) time.Duration { return min(time.Duration(n+1)*time.Second, 30*time.Second) },
		OnConnectError:                func(err error) { log.Warn("external broker connection failed", "err", err) },
		ClientConfig: paho.ClientConfig{ClientID: clientID, OnServerDisconnect: func(d *paho.Disconnect) {
			if d.ReasonCode == sessionTakenOver {
				// Mosquitto, as documented, makes the client ID the
				// certificate's CN: two cores with one identity knock
				// each other off the broker, over and over.
				log.Error("the broker let another client take this core's session: every core needs its own identity "+
					"(prov-pki issue --role core --name …) and its own user block in the broker's ACL", "clientId", clientID)
				return
			}
			log.Warn("the external broker disconnected core", "reason", d.ReasonCode)
		}},
	}
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("mqtt external broker: %w", err)
	}
	return &External{cm: cm, log: log}, nil
}

// sessionTakenOver is MQTT 5's DISCONNECT reason 0x8E.
const sessionTakenOver = 0x8e

// Notify publishes a notification, retained, QoS 1, and waits for the
// broker's acknowledgement.
func (e *External) Notify(ctx context.Context, n coreapi.Notification) error {
	payload, err := json.Marshal(n)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.cm.AwaitConnection(ctx); err != nil {
		return fmt.Errorf("external broker not connected: %w", err)
	}
	if _, err := e.cm.Publish(ctx, &paho.Publish{QoS: 1, Retain: true, Topic: coreapi.DeviceTopic(n.Serial), Payload: payload}); err != nil {
		return fmt.Errorf("publish to %s: %w", coreapi.DeviceTopic(n.Serial), err)
	}
	return nil
}

// Ready reports whether the connection is up.
func (e *External) Ready() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := e.cm.AwaitConnection(ctx); err != nil {
		return errors.New("external broker not connected")
	}
	return nil
}

// Close disconnects.
func (e *External) Close(ctx context.Context) error {
	return e.cm.Disconnect(ctx)
}
