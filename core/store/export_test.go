package store_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/store"
	"github.com/fleetprov/prov/core/store/postgres"
	"github.com/fleetprov/prov/internal/testenv/pgtest"
)

// populate fills s with every kind of record: two groups (one changed),
// devices (one with its own data, one revoked with certificates queued at
// the CA, one of them failed once), events that change no record, and
// what populateRollouts adds.
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
	populateRollouts(t, s, serials)
}

// populateRollouts adds reports and rollouts to a registry whose devices
// alternate two of default to one of line-b (serials[2] the first of
// line-b): reports of the first four devices (one failed, one reported
// twice); on line-b, a rollout that released its first member and was
// aborted (the rest stay held); on default, a running one that released
// its two canaries and holds the rest.
func populateRollouts(t testing.TB, s store.Store, serials []string) {
	t.Helper()
	at := time.Date(2026, 11, 29, 8, 0, 0, 987654321, time.UTC)
	for i, serial := range serials[:4] {
		r := coreapi.Report{Generation: 2, State: coreapi.StateHealthy, Running: 2, BootID: fmt.Sprintf("boot-%d", i), At: at}
		if i == 1 {
			r.State, r.Running, r.Error = coreapi.StateFailed, 1, "health check: exit status 3"
		}
		if _, err := s.SaveReport(serial, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SaveReport(serials[3], coreapi.Report{Generation: 3, State: coreapi.StateMounted, Running: 3, BootID: "boot-3", At: at.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	ok := func(*store.Group) error { return nil }
	release := func(ro *store.Rollout, wave int, serials ...string) *store.Rollout {
		t.Helper()
		next := *ro
		next.Released, next.ReleasedAt = wave+1, at
		out, released, err := s.StepRollout(store.RolloutStep{Next: &next, IfRev: ro.Rev, Release: serials, Wave: wave, Actor: "core", Action: "rollout wave"})
		if err != nil || len(released) != len(serials) {
			t.Fatalf("release wave %d of rollout %d: %v %v", wave, ro.ID, released, err)
		}
		return out
	}
	ro, _, err := s.StartRollout(&store.Rollout{Group: "line-b", Waves: []coreapi.Wave{{Serials: serials[2:3]}, {Rest: true}}}, 0,
		store.Change{Set: map[string]string{"/etc/prov/data/b": "bad"}}, "admin", ok)
	if err != nil {
		t.Fatal(err)
	}
	ro = release(ro, 0, serials[2])
	if _, _, err := s.AbortRollout(ro, ro.Rev, "admin", "canary failed", ok); err != nil {
		t.Fatal(err)
	}
	ro, _, err = s.StartRollout(&store.Rollout{Group: "default", Waves: []coreapi.Wave{{Serials: serials[:2]}, {Size: 1}, {Rest: true}},
		Policy: coreapi.RolloutPolicy{MaxFailedPercent: 50}}, 1, store.Change{Set: map[string]string{"/etc/prov/data/g": "3"}}, "admin", ok)
	if err != nil {
		t.Fatal(err)
	}
	release(ro, 0, serials[:2]...)
}

// Export yields what the contract's reads return, each kind in its order,
// on both engines.
func TestExport(t *testing.T) {
	forEngines(t, func(t *testing.T, e engine) {
		s := e.open(t, store.Options{})
		populate(t, s, 7)
		var groups, devices, subjects []string
		var events, queued int
		var members, reports, kept, holds, rollouts, waves []string
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
			Report: func(serial string, r *store.Report) error {
				reports = append(reports, serial)
				got, err := s.Report(serial)
				if err != nil || got == nil || store.Diff(got, r) != nil {
					t.Errorf("report of %s: exported %+v, read %+v %v", serial, r, got, err)
				}
				return nil
			},
			GroupVersion: func(g *store.Group) error { kept = append(kept, fmt.Sprintf("%s/%d", g.Name, g.Version)); return nil },
			Hold: func(group, serial string, version uint64) error {
				holds = append(holds, group+"/"+serial)
				v, err := s.Device(serial)
				if err != nil || !v.Held || v.Group != group || v.GroupVersion != version {
					t.Errorf("hold of %s in %s at %d: read %+v %v", serial, group, version, v, err)
				}
				return nil
			},
			Rollout: func(ro *store.Rollout) error {
				rollouts = append(rollouts, fmt.Sprintf("%d %s %s", ro.ID, ro.Group, ro.State))
				got, err := s.Rollout(ro.ID)
				if err != nil || store.Diff(got, ro) != nil {
					t.Errorf("rollout %d: exported %+v, read %+v %v", ro.ID, ro, got, err)
				}
				return nil
			},
			WaveMember: func(id uint64, wave int, serial string) error {
				waves = append(waves, fmt.Sprintf("%d/%d/%s", id, wave, serial))
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		sorted := func(s []string) bool { return strings.Join(s, "\n") == strings.Join(sortedCopy(s), "\n") }
		if len(groups) != 2 || len(devices) != 7 || !sorted(devices) || !sorted(subjects) || queued != 2 || len(members) != 2 || !sorted(members) ||
			!sorted(reports) || !sorted(holds) || !sorted(waves) {
			t.Fatalf("exported groups %v, devices %v, subjects %v, %d queued, batch members %v, reports %v, holds %v, waves %v",
				groups, devices, subjects, queued, members, reports, holds, waves)
		}
		// 2 groups created + 1 change; 7 registrations, 1 change, 4
		// certificates, 1 revoke, 1 refusal; 5 reports (4 devices, one
		// twice); rollouts: start, wave and abort, start and wave.
		if events != 2+1+7+1+4+1+1+5+3+2 {
			t.Fatalf("%d events exported", events)
		}
		// default's members are devices 0, 1, 3, 4, 6 (0 and 1 released),
		// line-b's 2 and 5 (2 released, then the rollout aborted).
		var d []string // in the order populate registered them
		for i := range 7 {
			d = append(d, reg(t, fmt.Sprintf("10000000%08x", i+1)).ID.Serial())
		}
		want := map[string]string{
			"reports":  fmt.Sprint(sortedCopy(d[:4])),
			"kept":     "[default/1 line-b/0]",
			"holds":    fmt.Sprint(sortedCopy([]string{"default/" + d[3], "default/" + d[4], "default/" + d[6], "line-b/" + d[5]})),
			"rollouts": "[1 line-b aborted 2 default running]",
			"waves":    fmt.Sprint(sortedCopy([]string{"1/0/" + d[2], "2/0/" + d[0], "2/0/" + d[1]})),
		}
		for what, got := range map[string][]string{"reports": reports, "kept": kept, "holds": holds, "rollouts": rollouts, "waves": waves} {
			if fmt.Sprint(got) != want[what] {
				t.Errorf("exported %s %v, want %s", what, got, want[what])
			}
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
	sameReads(t, src, empty)
	verifyCatchesHolds(t, src, empty)
	// The next rollout is numbered after the imported ones.
	g, err := empty.Group("line-b")
	if err != nil {
		t.Fatal(err)
	}
	if ro, _, err := empty.StartRollout(&store.Rollout{Group: "line-b"}, g.Version, store.Change{Set: map[string]string{"/etc/prov/data/b": "2"}}, "admin",
		func(*store.Group) error { return nil }); err != nil || ro.ID != uint64(n.Rollouts)+1 {
		t.Fatalf("a rollout started on the copy: %+v %v, want ID %d", ro, err, n.Rollouts+1)
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

// sameReads checks that a core on b reads what it read on a: every device
// (held or not, its generation and data), every report, every rollout and
// the members of each of its waves with their states.
func sameReads(t *testing.T, a, b store.Store) {
	t.Helper()
	held := 0
	for cursor := ""; ; {
		page, next, err := a.List(cursor, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range page {
			va, err := a.Device(v.Serial)
			if err != nil {
				t.Fatal(err)
			}
			vb, err := b.Device(v.Serial)
			if err != nil || store.Diff(va, vb) != nil || va.Generation() != vb.Generation() || va.Held != vb.Held {
				t.Errorf("device %s: %+v, on the copy %+v (%v, differs in %v)", v.Serial, va, vb, err, store.Diff(va, vb))
			}
			if va.Held {
				held++
			}
			ra, err := a.Report(v.Serial)
			if err != nil {
				t.Fatal(err)
			}
			if rb, err := b.Report(v.Serial); err != nil || store.Diff(ra, rb) != nil {
				t.Errorf("report of %s: %+v, on the copy %+v %v", v.Serial, ra, rb, err)
			}
		}
		if cursor = next; next == "" {
			break
		}
	}
	if held == 0 {
		t.Fatal("no device held: the registry does not test holds")
	}
	ra, err := a.Rollouts("", false)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := b.Rollouts("", false)
	if err != nil || len(ra) == 0 || store.Diff(ra, rb) != nil {
		t.Fatalf("rollouts %+v, on the copy %+v %v", ra, rb, err)
	}
	for _, ro := range ra {
		for wave := range ro.Waves {
			var ma, mb []store.MemberState
			if err := a.WaveStates(ro.ID, wave, func(m store.MemberState) error { ma = append(ma, m); return nil }); err != nil {
				t.Fatal(err)
			}
			if err := b.WaveStates(ro.ID, wave, func(m store.MemberState) error { mb = append(mb, m); return nil }); err != nil || store.Diff(ma, mb) != nil {
				t.Errorf("rollout %d wave %d: %+v, on the copy %+v %v", ro.ID, wave, ma, mb, err)
			}
		}
	}
}

// verifyCatchesHolds drops a hold in the copy, then moves it to a group
// version that is not kept (its member would be served the group's new
// data): Verify names each, even with a sample of one device, and is
// content again once the hold is back.
func verifyCatchesHolds(t *testing.T, src *store.Bolt, dst *pgStore) {
	t.Helper()
	var serial string
	if err := src.HeldMembers("default", func(s string) error { serial = s; return nil }); err != nil || serial == "" {
		t.Fatalf("a held member of default: %q %v", serial, err)
	}
	was, err := src.Device(serial)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), dst.connString)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(t.Context()) }()
	hold := func(at any) {
		t.Helper()
		if _, err := conn.Exec(t.Context(), "UPDATE devices SET held_at = $2 WHERE serial = $1", serial, at); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		at   any
		// always are said whatever the sample, sampled when the sample
		// holds the device.
		always, sampled []string
	}{
		{"dropped", nil,
			[]string{"counts: ", "hold of device " + serial + " (group default): held in the source, not in the target"},
			[]string{"device " + serial + ": Held differs", "device " + serial + ": GroupVersion differs", "device " + serial + ": GroupData differs"}},
		{"at a version not kept", int64(was.GroupVersion) - 1, //nolint:gosec // versions are small
			[]string{"holds: the same members are held, at other group versions in the target"},
			// The target refuses to read it rather than serve the group's
			// newer data.
			[]string{"device " + serial + ": store unavailable: device " + serial + " is held at a version of its group that is not kept in the target"}},
	} {
		hold(c.at)
		for _, sample := range []int{1000, 1} {
			ver, err := store.Verify(src, dst, sample)
			if err != nil || ver.OK() {
				t.Fatalf("hold %s, sample %d: verify %+v %v", c.name, sample, ver, err)
			}
			got := strings.Join(ver.Mismatches, "\n")
			want := slices.Clone(c.always)
			if sample == 1000 {
				want = append(want, c.sampled...)
			}
			for _, want := range want {
				if !strings.Contains(got, want) {
					t.Errorf("hold %s, sample %d: mismatches do not say %q:\n%s", c.name, sample, want, got)
				}
			}
		}
	}
	hold(int64(was.GroupVersion)) //nolint:gosec // versions are small
	if ver, err := store.Verify(src, dst, 1000); err != nil || !ver.OK() {
		t.Fatalf("verify with the hold back: %+v %v", ver, err)
	}
}

// A hold whose group version is not kept would be served its group's new
// data on PostgreSQL: Import refuses it, and writes nothing.
func TestImportRefusesAHoldWithoutItsVersion(t *testing.T) {
	s := openBolt(t, store.Options{}).(*store.Bolt)
	populate(t, s, 7)
	src := damaged(t, s, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("groupversions")).Delete(binary.BigEndian.AppendUint64([]byte("default\x00"), 1))
	})
	dst := emptyPostgres(t)
	if _, err := dst.Import(t.Context(), src); !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "of 4 holds, 1 name") {
		t.Fatalf("import of a hold without its version: %v, want ErrUnavailable", err)
	}
	if n, err := store.Count(dst); err != nil || n != (store.Counts{}) {
		t.Fatalf("after a refused import the database holds %s %v", n, err)
	}
}

// A bbolt file from before reports and rollouts, opened read-only as
// store migrate opens it, lacks their buckets: it is copied and verified
// all the same, and a rollout started on the copy since is named by a
// later verify (the source, holding no holds, is not asked for them).
func TestMigrateRegistryFromBeforeRollouts(t *testing.T) {
	s := openBolt(t, store.Options{}).(*store.Bolt)
	for i := range 3 {
		if _, _, err := s.Register(reg(t, fmt.Sprintf("10000000%08x", i+1))); err != nil {
			t.Fatal(err)
		}
	}
	src := damaged(t, s, func(tx *bolt.Tx) error {
		for _, b := range []string{"reports", "holds", "groupversions", "rollouts", "rolloutwaves"} {
			if err := tx.DeleteBucket([]byte(b)); err != nil {
				return fmt.Errorf("bucket %s: %w", b, err)
			}
		}
		return nil
	})
	dst := emptyPostgres(t)
	if n, err := dst.Import(t.Context(), src); err != nil || n.Devices != 3 || n.Rollouts != 0 {
		t.Fatalf("import: %s %v", n, err)
	}
	if ver, err := store.Verify(src, dst, 10); err != nil || !ver.OK() {
		t.Fatalf("verify: %+v %v", ver, err)
	}
	if _, _, err := dst.StartRollout(&store.Rollout{Group: "default"}, 0, store.Change{Set: map[string]string{"/etc/prov/data/a": "2"}}, "admin",
		func(*store.Group) error { return nil }); err != nil {
		t.Fatal(err)
	}
	ver, err := store.Verify(src, dst, 10)
	if err != nil || ver.OK() || !strings.Contains(strings.Join(ver.Mismatches, "\n"), "held in the target, not in the source") {
		t.Fatalf("verify after a rollout on the copy: %+v %v", ver, err)
	}
}

// damaged closes s, changes its file with edit (bbolt's own API, below the
// store's), and opens it again read-only, as store migrate opens its
// source.
func damaged(t *testing.T, s *store.Bolt, edit func(tx *bolt.Tx) error) *store.Bolt {
	t.Helper()
	path := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(edit)
	if cerr := db.Close(); err != nil || cerr != nil {
		t.Fatal(err, cerr)
	}
	src, err := store.Open(path, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}
