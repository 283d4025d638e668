package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/pki"
)

// Devices admits device certificates (core's registry): an error for a
// device that is unknown, revoked, or whose certificate's key core did not
// record for it.
type Devices interface {
	AdmitDevice(serial string, leaf *x509.Certificate) error
}

// errNoRegistry: SetDevices was not called; devices are refused.
var errNoRegistry = errors.New("the broker has no registry to admit devices with")

// aclHook identifies clients by their certificates, binds their client
// IDs, admits devices through the registry and enforces the ACL.
type aclHook struct {
	mochi.HookBase
	b *Broker
}

func (h *aclHook) ID() string { return "prov-certificate-acl" }

func (h *aclHook) Provides(b byte) bool {
	return b == mochi.OnConnect || b == mochi.OnConnectAuthenticate || b == mochi.OnSessionEstablished || b == mochi.OnACLCheck
}

// peer is a client's identity and certificate, only from its verified
// chain.
func peer(cl *mochi.Client) (pki.Identity, *x509.Certificate, bool) {
	c, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return pki.Identity{}, nil, false
	}
	cs := c.ConnectionState()
	id, err := pki.PeerIdentity(&cs)
	if err != nil {
		return pki.Identity{}, nil, false
	}
	return id, cs.VerifiedChains[0][0], true
}

// OnConnect decides on a CONNECT before mochi looks at sessions, so a
// refused client never takes one over, and tells the client why: 0x85
// for a client ID that is not its own, 0x87 for a device the registry
// refuses or a role that has no business here.
func (h *aclHook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	id, leaf, ok := peer(cl)
	code, why := packets.CodeSuccess, ""
	clientID := pk.Connect.ClientIdentifier
	switch {
	case !ok:
		code, why = packets.ErrNotAuthorized, "no identity"
	case id.Role == pki.RoleDevice && clientID != coreapi.DeviceClientID(id.Name):
		code, why = packets.ErrClientIdentifierNotValid, "a device connects with its own client ID only, "+coreapi.DeviceClientID(id.Name)
	case id.Role == pki.RoleDevice:
		if err := h.b.admit(id, leaf); err != nil {
			code, why = packets.ErrNotAuthorized, err.Error()
		}
	case id.Role == pki.RoleCore && strings.HasPrefix(clientID, coreapi.DeviceClientIDPrefix):
		code, why = packets.ErrClientIdentifierNotValid, "device client IDs are the devices' own"
	case id.Role != pki.RoleCore:
		code, why = packets.ErrNotAuthorized, "role not served"
	}
	if code == packets.CodeSuccess {
		return nil
	}
	h.b.log.Info("mqtt connection refused", "remote", cl.Net.Remote, "identity", id.String(), "client_id", clientID,
		"reason", why)
	_ = h.b.srv.SendConnack(cl, code, false, nil) //nolint:errcheck // the connection ends either way
	return code
}

// OnConnectAuthenticate: only devices and core (OnConnect has decided the
// rest; mochi needs an authenticating hook).
func (h *aclHook) OnConnectAuthenticate(cl *mochi.Client, _ packets.Packet) bool {
	if cl.Net.Inline {
		return true
	}
	id, _, ok := peer(cl)
	return ok && (id.Role == pki.RoleDevice || id.Role == pki.RoleCore)
}

// OnSessionEstablished checks again once the client is listed: a revoke or
// a CRL that came between OnConnect and the listing found nothing to
// close, so it is closed here.
func (h *aclHook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	if cl.Net.Inline {
		return
	}
	id, leaf, ok := peer(cl)
	if !ok {
		return
	}
	var err error
	if h.b.checkRevoked != nil {
		err = h.b.checkRevoked(leaf)
	}
	if err == nil && id.Role == pki.RoleDevice {
		err = h.b.admit(id, leaf)
	}
	if err != nil {
		h.b.disconnect(cl, id, err.Error())
	}
}

// OnACLCheck: a device the registry still admits reads its own topic,
// exactly (no wildcards); core publishes below the device prefix; nothing
// else is allowed. mochi asks on SUBSCRIBE and PUBLISH, and before it
// delivers a message to a subscriber.
func (h *aclHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	id, leaf, ok := peer(cl)
	if !ok {
		return false
	}
	switch id.Role {
	case pki.RoleDevice:
		return !write && topic == coreapi.DeviceTopic(id.Name) && h.b.admit(id, leaf) == nil
	case pki.RoleCore:
		return write && strings.HasPrefix(topic, coreapi.TopicPrefix) && !strings.ContainsAny(topic, "+#")
	default:
		return false
	}
}

// admit asks the registry about a device.
func (b *Broker) admit(id pki.Identity, leaf *x509.Certificate) error {
	d := b.devices.Load()
	if d == nil {
		return errNoRegistry
	}
	return (*d).AdmitDevice(id.Name, leaf)
}

// CloseDevice closes a revoked device's session (its one client ID) and
// drops what the broker keeps for it.
func (b *Broker) CloseDevice(serial string) {
	cl, ok := b.srv.Clients.Get(coreapi.DeviceClientID(serial))
	if !ok {
		return
	}
	id, _, ok := peer(cl)
	if ok && (id.Role != pki.RoleDevice || id.Name != serial) {
		return // cannot be: client IDs are bound
	}
	b.disconnect(cl, id, "device revoked")
	b.srv.UnsubscribeClient(cl)
	b.srv.Clients.Delete(cl.ID)
}

// CloseRevoked closes the sessions whose certificates the CRL now lists
// (core calls it when a CRL refresh brings new entries).
func (b *Broker) CloseRevoked() {
	if b.checkRevoked == nil {
		return
	}
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() {
			continue
		}
		if id, leaf, ok := peer(cl); ok {
			if err := b.checkRevoked(leaf); err != nil {
				b.disconnect(cl, id, err.Error())
			}
		}
	}
}

// disconnect ends a client's connection with "not authorized".
func (b *Broker) disconnect(cl *mochi.Client, id pki.Identity, why string) {
	if cl.Closed() {
		return
	}
	b.log.Info("mqtt session closed", "client_id", cl.ID, "identity", id.String(), "reason", why)
	_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized) //nolint:errcheck // it returns the code it closed with
}
