package policy_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/policy"
)

func secret(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var groups = map[string]policy.GroupConfig{"default": {Hostname: "{{.Board}}-{{.Serial}}", MQTTClientID: "{{.Serial}}", MQTTGroupID: "fleet"}}

func TestMachineID(t *testing.T) {
	a := strings.Repeat("a", 40)
	p1, err := policy.New(groups, imagespec.DefaultRules(), secret(t, a))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := policy.New(groups, imagespec.DefaultRules(), secret(t, a+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	p3, err := policy.New(groups, imagespec.DefaultRules(), secret(t, strings.Repeat("b", 40)))
	if err != nil {
		t.Fatal(err)
	}
	id := p1.MachineID("1a2b3c4d5e")
	if err := imagespec.CheckMachineID(id); err != nil {
		t.Fatal(err)
	}
	if p2.MachineID("1a2b3c4d5e") != id {
		t.Error("the same secret on another instance gives another machine-id")
	}
	if p3.MachineID("1a2b3c4d5e") == id || p1.MachineID("1a2b3c4d5f") == id {
		t.Error("the machine-id does not depend on the secret and the serial")
	}
	none, err := policy.New(groups, imagespec.DefaultRules(), "")
	if err != nil || none.MachineID("1a2b3c4d5e") != "" {
		t.Fatalf("no secret: %q %v", none.MachineID("1a2b3c4d5e"), err)
	}
	imm, err := p1.Immutable("default", "1a2b3c4d5e", "bbb")
	if err != nil || imm.Hostname != "bbb-1a2b3c4d5e" || imm.MachineID != id || imm.MQTTGroupID != "fleet" {
		t.Fatalf("immutable %+v %v", imm, err)
	}
}

func TestPolicyRefusals(t *testing.T) {
	for name, tc := range map[string]struct {
		groups map[string]policy.GroupConfig
		secret string
	}{
		"short secret":        {groups, "short"},
		"no groups":           {nil, ""},
		"template error":      {map[string]policy.GroupConfig{"g": {Hostname: "{{.X}}", MQTTClientID: "c", MQTTGroupID: "g"}}, ""},
		"bad hostname result": {map[string]policy.GroupConfig{"g": {Hostname: "UPPER", MQTTClientID: "c", MQTTGroupID: "g"}}, ""},
		"bad group id":        {map[string]policy.GroupConfig{"g": {Hostname: "h{{.Serial}}", MQTTClientID: "c", MQTTGroupID: "a/b"}}, ""},
		"bad group name":      {map[string]policy.GroupConfig{"a/b": {Hostname: "h", MQTTClientID: "c", MQTTGroupID: "g"}}, ""},
		"data outside":        {map[string]policy.GroupConfig{"g": {Hostname: "h", MQTTClientID: "c", MQTTGroupID: "g", Data: map[string]string{"/etc/passwd": "x"}}}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			sf := ""
			if tc.secret != "" {
				sf = secret(t, tc.secret)
			}
			_, err := policy.New(tc.groups, imagespec.DefaultRules(), sf)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, policy.ErrBadPolicy) && !errors.Is(err, imagespec.ErrBadPath) && !strings.Contains(err.Error(), "bad") {
				t.Fatalf("unexpected error %v", err)
			}
		})
	}
}
