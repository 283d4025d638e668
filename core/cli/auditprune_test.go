package cli_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/cli"
	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/coretest"
	"github.com/fleetprov/prov/core/service"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/internal/testenv"
	"github.com/fleetprov/prov/pki"
	"github.com/fleetprov/prov/pki/deployment"
)

// pastClock is core's store clock set back by an offset: events written
// while it is set back are old ones.
type pastClock struct{ offset atomic.Int64 }

func (c *pastClock) Now() time.Time       { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *pastClock) back(d time.Duration) { c.offset.Store(int64(-d)) }
func (c *pastClock) options() service.Option {
	return service.WithStoreOptions(store.Options{Now: c.Now})
}

// oldChanges registers a device and changes its data n times, 40 days
// ago by core's store clock, which is then set to now.
func oldChanges(t *testing.T, core *coretest.Core, clock *pastClock, n int) *coreapi.Device {
	t.Helper()
	clock.back(40 * 24 * time.Hour)
	d := core.Register(t, "rpi4", coretest.RPi4(7))
	client := core.Client(t, core.Admin(t))
	for i := range n {
		var err error
		if d, err = client.SetDeviceData(t.Context(), d.Serial, d.Generation, coreapi.DataChange{Set: map[string]string{"/etc/prov/data/x": fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	clock.back(0)
	return d
}

// actions counts a device's audit events by action, with its summary.
func actions(t *testing.T, core *coretest.Core, serial string) (map[string]int, *coreapi.Event) {
	t.Helper()
	ev, err := core.Client(t, core.Admin(t)).DeviceAudit(t.Context(), serial, 0)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	var summary *coreapi.Event
	for i, e := range ev {
		counts[e.Action]++
		if e.Action == store.ActionPruned {
			summary = &ev[i]
		}
	}
	return counts, summary
}

// TestAdminAuditPrune: prov-core admin audit prune against a real core
// removes old events but the newest of each action, says how many, leaves
// a summary in the device's trail, finds nothing the second time, and
// refuses a missing, malformed or future date naming --before.
func TestAdminAuditPrune(t *testing.T) {
	clock := &pastClock{}
	core := coretest.Start(t, "", clock.options())
	d := oldChanges(t, core, clock, 4)
	id := core.IdentityDir(pki.RoleAdmin, deployment.DefaultAdminName)
	admin := func(args ...string) (int, string, string) {
		return run(append([]string{"admin", "--core", core.URL, "--identity", id}, args...)...)
	}
	// A device's data changes now: not removed, and the older ones are not
	// the newest of their action any more.
	if code, out, errs := admin("set", d.Serial, "/etc/prov/data/x=now"); code != cli.ExitOK {
		t.Fatalf("set: %d\n%s%s", code, out, errs)
	}
	before := time.Now().Add(-30 * 24 * time.Hour).UTC().Format(time.DateOnly)
	code, out, errs := admin("audit", "prune", "--before", before, "--json")
	var res coreapi.AuditPruneResult
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("audit prune: %d\n%s%s", code, out, errs)
	}
	// Of the four old data changes the newest before the date stays (a
	// prune reads no further back than its date); three go. The register
	// event is the newest of its action and stays, as does the group's.
	if res.Events != 3 || res.Subjects != 1 || res.Actions["set data"] != 3 {
		t.Errorf("prune: %+v, want 3 set data events of one device", res)
	}
	counts, summary := actions(t, core, d.Serial)
	if counts["register"] != 1 || counts["set data"] != 2 || summary == nil || summary.Detail[store.PrunedEvents] != "3" ||
		summary.Detail["action set data"] != "3" || summary.Actor != "spiffe://"+core.TrustDomain+"/admin/"+deployment.DefaultAdminName {
		t.Errorf("trail after prune: %v, summary %+v", counts, summary)
	}
	code, out, errs = admin("audit", "prune", "--before", before)
	if code != cli.ExitOK || !strings.Contains(out, "pruned 0 events") {
		t.Errorf("second prune: %d\n%s%s", code, out, errs)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"audit", "prune"}, cli.ExitUsage, "--before"},
		{[]string{"audit", "prune", "--before", "last tuesday"}, cli.ExitUsage, "--before"},
		{[]string{"audit", "prune", "--before", "2026-13-01"}, cli.ExitUsage, "--before"},
		{[]string{"audit", "prune", "--before", time.Now().Add(48 * time.Hour).UTC().Format(time.DateOnly)}, cli.ExitError, "in the future"},
		{[]string{"audit", "prune", "extra", "--before", before}, cli.ExitUsage, "no arguments"},
	} {
		code, _, errs := admin(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) || !strings.Contains(errs, "before") {
			t.Errorf("%v: exit %d, want %d naming %q and --before:\n%s", tc.args, code, tc.code, tc.want, errs)
		}
	}
	// Not for a device's or a proxy's certificate: admin only.
	_, err := core.Client(t, core.Proxy(t)).PruneAudit(t.Context(), time.Now().Add(-time.Hour))
	if se := (*coreapi.StatusError)(nil); !errors.As(err, &se) || se.Status != 403 {
		t.Errorf("prune as a proxy: %v, want 403", err)
	}
}

// TestAuditRetentionSetting: a core with audit.retention prunes on its
// own, every audit.pruneEvery.
func TestAuditRetentionSetting(t *testing.T) {
	clock := &pastClock{}
	// Until the old events are written, the store's clock is 40 days
	// back and retention's date is in its future: refused and logged.
	core := coretest.Start(t, "audit: {retention: 30d, pruneEvery: 50ms}\n", clock.options())
	d := oldChanges(t, core, clock, 3)
	err := testenv.WaitFor(30*time.Second, func() error {
		if _, summary := actions(t, core, d.Serial); summary == nil {
			return errors.New("no summary in the trail yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	counts, summary := actions(t, core, d.Serial)
	// Three data changes 40 days ago: the newest stays, two go.
	if counts["set data"] != 1 || counts["register"] != 1 || summary.Detail["action set data"] != "2" ||
		!strings.HasSuffix(summary.Actor, "/core/"+deployment.DefaultCoreName) {
		t.Errorf("trail after retention: %v, summary %+v", counts, summary)
	}
}
