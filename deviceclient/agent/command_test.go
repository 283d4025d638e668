package agent_test

import (
	"slices"
	"testing"

	"github.com/fleetprov/prov/deviceclient/agent"
)

func TestParseCommand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		bad  bool
	}{
		{"", nil, false},
		{"  \n", nil, false},
		{"systemctl is-system-running --wait\n", []string{"systemctl", "is-system-running", "--wait"}, false},
		{`["/bin/sh","-c","test -s /etc/app.conf"]`, []string{"/bin/sh", "-c", "test -s /etc/app.conf"}, false},
		{`[]`, nil, true},
		{`[""]`, nil, true},
		{`["a", 1]`, nil, true},
		{`[not json`, nil, true},
	} {
		got, err := agent.ParseCommand(tc.in)
		if (err != nil) != tc.bad || !slices.Equal(got, tc.want) {
			t.Errorf("ParseCommand(%q) = %q, %v", tc.in, got, err)
		}
	}
}
