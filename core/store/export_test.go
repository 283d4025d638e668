package store_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

// populate fills s with every kind of record: two groups (one changed),
// devices (one with its own data, one revoked with certificates queued at
// the CA, one of them failed once), events that change no record.
func populate(t testing.TB, s store.Store, devices int) {
	t.Helper()
	if _, _, err := s.EnsureGroup("line-b", nil, "config"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetGroupData("default", 0, store.Change{Set: map[string]string{"/etc/prov/data/g": "2"}}, "admin", func(*store.Group) error { return nil }); err != nil {
		t.Fatal(err)
	}
	var serials []string
	for i := range devices {
		r := reg(t, fmt.Sprintf("10000000%08x", i+1))
		if i%3 == 2 {
			r.Group = "line-b"
		}
		v, _, err := s.Register(r)
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, v.Serial)
	}
	now := time.Date(2026, 11, 28, 10, 0, 0, 123456789, time.UTC)
	if _, err := s.SetDeviceData(serials[0], 2, store.Change{Set: map[string]string{"/etc/prov/data/k": "v"}}, "admin", func(*store.View) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for i, serial := range serials[1:3] {
		if _, err := s.RecordIssued(serial, store.Issued{Serial: fmt.Sprint(100 + i), KeySHA256: "k", NotBefore: now, NotAfter: now.Add(time.Hour), IssuedBy: "proxy"}); err != nil {
			t.Fatal(err)
		}
		if err := s.SeenCertificate(serial, store.Certificate{Fingerprint: "fp", Serial: fmt.Sprint(200 + i), NotAfter: now, FirstSeen: now}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Revoke(serials[1], "admin", "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	// Nanoseconds: what PostgreSQL keeps to the microsecond.
	if err := s.CARevocationFailed(serials[1], "100", "step-ca away", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAudit(store.Event{At: now, Actor: "admin", Subject: "device/" + serials[2], Action: "refused"}); err != nil {
		t.Fatal(err)
	}
	// Two places of batch b1 used for good, one reservation in progress.
	for i, serial := range serials[:3] {
		key := fmt.Sprintf("key-%d", i)
		if _, err := s.Admit(store.AdmissionRequest{Serial: serial, KeySHA256: key, Batch: "b1", Quota: 10, Policy: coreapi.ReenrollAllow,
			Lease: time.Hour, Proxy: "proxy"}); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if err := s.EndAdmission("b1", serial, key, true); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Export yields what the contract's reads return, each kind in its order,
// on both engines.
func TestExport(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		populate(t, s, 7)
		var groups, devices, subjects []string
		var events, queued int
		var members []string
		err := s.(store.Exporter).Export(store.Exported{
			BatchMember: func(batch, serial string) error { members = append(members, batch+"/"+serial); return nil },
			Group: func(g *store.Group) error {
				groups = append(groups, g.Name)
				got, err := s.Group(g.Name)
				if err != nil {
					return err
				}
				if d := store.Diff(got, g); d != nil {
					t.Errorf("group %s exported differs in %v", g.Name, d)
				}
				return nil
			},
			Device: func(key string, d *store.Device) error {
				devices = append(devices, d.Serial)
				v, err := s.Device(d.Serial)
				if err != nil {
					return err
				}
				if diff := store.Diff(&v.Device, d); diff != nil || key != "rpi4/"+v.HardwareID {
					t.Errorf("device %s exported differs in %v (key %q)", d.Serial, diff, key)
				}
				return nil
			},
			Audit: func(ev *store.Event) error {
				events++
				if len(subjects) == 0 || subjects[len(subjects)-1] != ev.Subject {
					subjects = append(subjects, ev.Subject)
				}
				trail, err := s.Audit(ev.Subject, ev.Seq-1, 1)
				if err != nil || len(trail) != 1 || store.Diff(&trail[0], ev) != nil {
					t.Errorf("event %d of %s: exported %+v, read %+v %v", ev.Seq, ev.Subject, ev, trail, err)
				}
				return nil
			},
			CARevocation: func(r *store.CARevocation) error { queued++; return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		sorted := func(s []string) bool { return strings.Join(s, "\n") == strings.Join(sortedCopy(s), "\n") }
		if len(groups) != 2 || len(devices) != 7 || !sorted(devices) || !sorted(subjects) || queued != 2 || len(members) != 2 || !sorted(members) {
			t.Fatalf("exported groups %v, devices %v, subjects %v, %d queued, batch members %v", groups, devices, subjects, queued, members)
		}
		// 2 groups created + 1 change; 7 registrations, 1 change, 4
		// certificates, 1 revoke, 1 refusal.
		if events != 2+1+7+1+4+1+1 {
			t.Fatalf("%d events exported", events)
		}
	})
}

func sortedCopy(s []string) []string {
	out := append([]string{}, s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// A registry on bbolt imported into PostgreSQL: Verify finds the same
// counts and records; the copy goes on where the source left off (the
// same hardware ID is the same device; the audit trail is numbered on);
// a second import is refused and changes nothing; a record changed in the
// copy is named with its field.
func TestImportFromBoltIntoPostgreSQL(t *testing.T) {
	src := openBolt(t, store.Options{}).(*store.Bolt)
	populate(t, src, 25)
	dst := openPostgres(t, store.Options{}).(*pgStore)
	if _, err := dst.Import(t.Context(), src); !errors.Is(err, postgres.ErrNotEmpty) {
		t.Fatalf("import into a database with a group: %v, want ErrNotEmpty", err)
	}
	empty := emptyPostgres(t)
	n, err := empty.Import(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	want, err := store.Count(src)
	if err != nil || n != want || n.Devices != 25 || n.CARevocations != 2 {
		t.Fatalf("imported %s, the source holds %s (%v)", n, want, err)
	}
	ver, err := store.Verify(src, empty, 10)
	if err != nil || !ver.OK() || ver.Sampled != 10 {
		t.Fatalf("verify: %+v %v", ver, err)
	}
	if _, err := empty.Import(t.Context(), src); !errors.Is(err, postgres.ErrNotEmpty) {
		t.Fatalf("a second import: %v, want ErrNotEmpty", err)
	}

	first, _ := src.Device(reg(t, "1000000000000001").ID.Serial())
	v, created, err := empty.Register(reg(t, "1000000000000001"))
	if err != nil || created || v.Serial != first.Serial || v.Generation() != first.Generation() {
		t.Fatalf("the imported device registered again: %+v created %v %v", v, created, err)
	}
	trail, _ := src.Audit("device/"+first.Serial, 0, 100)
	if _, err := empty.Reprovision(first.Serial, "admin"); err != nil {
		t.Fatal(err)
	}
	after, err := empty.Audit("device/"+first.Serial, trail[len(trail)-1].Seq, 100)
	if err != nil || len(after) != 1 || after[0].Action != "reprovision" {
		t.Fatalf("the copy's next event: %+v %v", after, err)
	}

	ver, err = store.Verify(src, empty, 1000)
	if err != nil || ver.OK() {
		t.Fatalf("verify after a change in the copy: %+v %v", ver, err)
	}
	got := strings.Join(ver.Mismatches, "\n")
	for _, want := range []string{"counts: source has 2 groups", "device " + first.Serial + ": Version differs", "audit of device/" + first.Serial} {
		if !strings.Contains(got, want) {
			t.Errorf("mismatches do not say %q:\n%s", want, got)
		}
	}
}

// emptyPostgres is a store on a new database of the test cluster with
// nothing in it, not even a group.
func emptyPostgres(t testing.TB) *pgStore {
	t.Helper()
	return openPostgresAt(t, pgtest.New(t, fmt.Sprintf("registry-v%d", postgres.SchemaVersion()), postgres.Migrate), postgres.Options{})
}
