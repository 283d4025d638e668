// Package mqtt carries core's update notifications: an embedded broker
// (mochi-mqtt) on a TLS listener where clients are identified only by
// their certificates from the deployment's PKI, a device may subscribe to
// its own topic only and only core publishes; or a publisher that connects
// to an external broker (Mosquitto, say) with core's certificate.
package mqtt

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/pki"
)

// Broker is the embedded broker.
type Broker struct {
	srv     *mochi.Server
	ln      *listeners.TCP
	log     *slog.Logger
	serving atomic.Bool
}

// NewBroker prepares a broker listening on addr with tlsCfg, which must
// require and verify client certificates of the deployment. It binds addr
// at once (port 0 takes a free port), so Addr is the bound address before
// Run, and clients that connect meanwhile wait in the listen queue.
func NewBroker(addr string, tlsCfg *tls.Config, log *slog.Logger) (*Broker, error) {
	if tlsCfg == nil || tlsCfg.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("mqtt broker: TLS with required client certificates is mandatory")
	}
	log = log.With("component", "mqtt")
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: log})
	if err := srv.AddHook(&aclHook{log: log}, nil); err != nil {
		return nil, fmt.Errorf("mqtt broker: %w", err)
	}
	ln := listeners.NewTCP(listeners.Config{ID: "tls", Address: addr, TLSConfig: tlsCfg})
	if err := srv.AddListener(ln); err != nil {
		return nil, fmt.Errorf("mqtt broker on %s: %w", addr, err)
	}
	return &Broker{srv: srv, ln: ln, log: log}, nil
}

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

// Notify publishes a notification on the device's topic, retained, QoS 1,
// so a device that subscribes later still learns of it.
func (b *Broker) Notify(_ context.Context, n coreapi.Notification) error {
	payload, err := json.Marshal(n)
	if err != nil {
		return err
	}
	if err := b.srv.Publish(coreapi.DeviceTopic(n.Serial), payload, true, 1); err != nil {
		return fmt.Errorf("publish to %s: %w", coreapi.DeviceTopic(n.Serial), err)
	}
	return nil
}

// aclHook identifies clients by their certificates and enforces the ACL.
type aclHook struct {
	mochi.HookBase
	log *slog.Logger
}

func (h *aclHook) ID() string { return "prov-certificate-acl" }

func (h *aclHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

// identity of a client: only from its verified certificate.
func identity(cl *mochi.Client) (pki.Identity, bool) {
	c, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return pki.Identity{}, false
	}
	cs := c.ConnectionState()
	id, err := pki.PeerIdentity(&cs)
	return id, err == nil
}

func (h *aclHook) OnConnectAuthenticate(cl *mochi.Client, _ packets.Packet) bool {
	if cl.Net.Inline {
		return true
	}
	id, ok := identity(cl)
	if !ok || (id.Role != pki.RoleDevice && id.Role != pki.RoleCore) {
		h.log.Info("mqtt connection refused", "remote", cl.Net.Remote, "identity", id.String())
		return false
	}
	return true
}

// OnACLCheck: a device reads its own topic, exactly (no wildcards); core
// publishes below the device prefix; nothing else is allowed.
func (h *aclHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	id, ok := identity(cl)
	if !ok {
		return false
	}
	switch id.Role {
	case pki.RoleDevice:
		return !write && topic == coreapi.DeviceTopic(id.Name)
	case pki.RoleCore:
		return write && strings.HasPrefix(topic, coreapi.TopicPrefix) && !strings.ContainsAny(topic, "+#")
	default:
		return false
	}
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
		ClientConfig:                  paho.ClientConfig{ClientID: clientID},
	}
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("mqtt external broker: %w", err)
	}
	return &External{cm: cm, log: log}, nil
}

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
