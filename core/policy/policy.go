// Package policy computes a device's data from the data policy of its
// group: the immutable values (hostname, MQTT client and group IDs, and a
// machine-id derived with a keyed function) once, at registration, and the
// initial mutable data of each group.
package policy

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"

	"github.com/fleetprov/prov/core/contract/hwid"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/core/store"
)

// ErrBadPolicy wraps every error of the policy configuration.
var ErrBadPolicy = errors.New("bad data policy")

// GroupConfig is one group's policy, as configured.
type GroupConfig struct {
	// Hostname and MQTTClientID are templates over {{.Serial}},
	// {{.Board}} and {{.Group}}.
	Hostname     string `yaml:"hostname"`
	MQTTClientID string `yaml:"mqttClientId"`
	MQTTGroupID  string `yaml:"mqttGroupId"`
	// Data is the group's initial mutable data (path -> content). Once the
	// group exists in the store, the store holds its data.
	Data map[string]string `yaml:"data"`
	// RequireTPM: core serves the group's devices (API and broker) only
	// with a key the proxy attested resident in a TPM at enrollment.
	RequireTPM bool `yaml:"requireTPM"`
}

// Policy is the validated policy of all groups.
type Policy struct {
	groups    map[string]group
	rules     imagespec.Rules
	machineID []byte // secret; nil: no machine-id
}

type group struct {
	cfg               GroupConfig
	hostname, mqttCID *template.Template
}

// TemplateData is what templates see.
type TemplateData struct {
	Serial, Board, Group string
}

// MinSecretLen is the shortest machine-id secret accepted.
const MinSecretLen = 32

// New validates the groups' policies against the image rules, and reads
// the machine-id secret (empty path: images carry no machine-id).
func New(groups map[string]GroupConfig, rules imagespec.Rules, machineIDSecretFile string) (*Policy, error) {
	if err := rules.Validate(); err != nil {
		return nil, err
	}
	p := &Policy{groups: map[string]group{}, rules: rules}
	if machineIDSecretFile != "" {
		secret, err := os.ReadFile(machineIDSecretFile) //nolint:gosec // operator's configuration
		if err != nil {
			return nil, fmt.Errorf("%w: machine-id secret: %w", ErrBadPolicy, err)
		}
		secret = bytes.TrimSpace(secret)
		if len(secret) < MinSecretLen {
			return nil, fmt.Errorf("%w: machine-id secret %s has %d bytes, want at least %d", ErrBadPolicy, machineIDSecretFile, len(secret), MinSecretLen)
		}
		p.machineID = secret
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("%w: no groups", ErrBadPolicy)
	}
	for name, cfg := range groups {
		if err := imagespec.CheckMQTTID("group name", name); err != nil {
			return nil, fmt.Errorf("%w: groups.%s: %w", ErrBadPolicy, name, err)
		}
		g := group{cfg: cfg}
		var err error
		if g.hostname, err = parse(name, "hostname", cfg.Hostname); err != nil {
			return nil, err
		}
		if g.mqttCID, err = parse(name, "mqttClientId", cfg.MQTTClientID); err != nil {
			return nil, err
		}
		if err := imagespec.CheckMQTTID("mqttGroupId", cfg.MQTTGroupID); err != nil {
			return nil, fmt.Errorf("%w: groups.%s.mqttGroupId: %w", ErrBadPolicy, name, err)
		}
		p.groups[name] = g
		// The templates must give valid values for any serial and board,
		// and the initial data must build: try it now, not at the first
		// registration.
		for _, board := range hwid.BoardNames() {
			if _, err := p.Immutable(name, "0123456789", board); err != nil {
				return nil, fmt.Errorf("%w: groups.%s: %w", ErrBadPolicy, name, err)
			}
		}
		if err := p.CheckData(cfg.Data); err != nil {
			return nil, fmt.Errorf("%w: groups.%s.data: %w", ErrBadPolicy, name, err)
		}
	}
	return p, nil
}

func parse(group, field, text string) (*template.Template, error) {
	if text == "" {
		return nil, fmt.Errorf("%w: groups.%s.%s: empty", ErrBadPolicy, group, field)
	}
	t, err := template.New(field).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%w: groups.%s.%s: %w", ErrBadPolicy, group, field, err)
	}
	return t, nil
}

// Rules are the image rules.
func (p *Policy) Rules() imagespec.Rules { return p.rules }

// Groups lists the configured groups with their initial data.
func (p *Policy) Groups() map[string]map[string]string {
	out := map[string]map[string]string{}
	for name, g := range p.groups {
		out[name] = g.cfg.Data
	}
	return out
}

// HasGroup reports whether a group is configured.
func (p *Policy) HasGroup(name string) bool { _, ok := p.groups[name]; return ok }

// RequiresTPM reports whether the group's devices must use a key attested
// resident in a TPM (GroupConfig.RequireTPM).
func (p *Policy) RequiresTPM(name string) bool { return p.groups[name].cfg.RequireTPM }

// Immutable computes a new device's immutable data.
func (p *Policy) Immutable(groupName, serial, board string) (store.Immutable, error) {
	g, ok := p.groups[groupName]
	if !ok {
		return store.Immutable{}, fmt.Errorf("%w %q", store.ErrUnknownGroup, groupName)
	}
	data := TemplateData{Serial: serial, Board: board, Group: groupName}
	host, err := execute(g.hostname, data)
	if err != nil {
		return store.Immutable{}, err
	}
	if err := imagespec.CheckHostname(host); err != nil {
		return store.Immutable{}, fmt.Errorf("hostname template gives %q: %w", host, err)
	}
	cid, err := execute(g.mqttCID, data)
	if err != nil {
		return store.Immutable{}, err
	}
	if err := imagespec.CheckMQTTID("mqttClientId", cid); err != nil {
		return store.Immutable{}, fmt.Errorf("mqttClientId template: %w", err)
	}
	return store.Immutable{Hostname: host, MachineID: p.MachineID(serial), MQTTClientID: cid, MQTTGroupID: g.cfg.MQTTGroupID}, nil
}

func execute(t *template.Template, data TemplateData) (string, error) {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("template %s: %w", t.Name(), err)
	}
	return b.String(), nil
}

// MachineID derives a device's machine-id: HMAC-SHA256 keyed with the
// deployment's secret over "prov-machine-id-v1" and the serial, as 32 hex
// digits. The same secret gives the same machine-id on every core instance;
// without the secret it cannot be guessed from the serial. Empty when no
// secret is configured.
func (p *Policy) MachineID(serial string) string {
	if p.machineID == nil {
		return ""
	}
	m := hmac.New(sha256.New, p.machineID)
	m.Write([]byte("prov-machine-id-v1\x00"))
	m.Write([]byte(serial))
	id := hex.EncodeToString(m.Sum(nil))[:32]
	if strings.Trim(id, "0") == "" { // machine-id(5) forbids all zeros; 2^-128
		id = "0000000000000000000000000000000" + "1"
	}
	return id
}

// CheckData validates mutable data as part of an image.
func (p *Policy) CheckData(data map[string]string) error {
	r := imagebuild.Record{Serial: "0123456789", Generation: 1, IssuedAt: time.Unix(1, 0), Hostname: "h", MQTTClientID: "c", MQTTGroupID: "g", Data: data}
	return r.Validate(p.rules)
}

// Record is the image record of a device view.
func Record(v *store.View) *imagebuild.Record {
	return &imagebuild.Record{
		Serial:       v.Serial,
		Generation:   v.Generation(),
		IssuedAt:     v.IssuedAt(),
		Hostname:     v.Immutable.Hostname,
		MachineID:    v.Immutable.MachineID,
		MQTTClientID: v.Immutable.MQTTClientID,
		MQTTGroupID:  v.Immutable.MQTTGroupID,
		Data:         v.EffectiveData(),
	}
}
