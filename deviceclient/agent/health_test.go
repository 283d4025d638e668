package agent_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/deviceclient/agent"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
	"github.com/fleetprov/prov/internal/testenv"
)

// setData changes the device's data at core as an admin: a new
// generation. A nil value unsets the file.
func (f *fleet) setData(t *testing.T, serial string, files map[string]*string) uint64 {
	t.Helper()
	cl := f.core.Client(t, f.core.Admin(t))
	d, err := cl.Device(ctx, serial)
	if err != nil {
		t.Fatal(err)
	}
	change := coreapi.DataChange{Set: map[string]string{}}
	for p, v := range files {
		if v == nil {
			change.Unset = append(change.Unset, p)
		} else {
			change.Set[p] = *v
		}
	}
	d, err = cl.SetDeviceData(ctx, serial, d.Generation, change)
	if err != nil {
		t.Fatal(err)
	}
	return d.Generation
}

func ptr(s string) *string { return &s }

// healthCheck sets the image's own health check (agent.ImageHealthCheck)
// to argv, and the site so that each generation differs.
func (f *fleet) healthCheck(t *testing.T, serial, site string, argv ...string) uint64 {
	t.Helper()
	files := map[string]*string{"/etc/prov/data/site": ptr(site + "\n")}
	if argv == nil {
		files[agent.ImageHealthCheck] = nil
	} else {
		files[agent.ImageHealthCheck] = ptr(fmt.Sprintf("%q\n", argv))
		q := make([]string, len(argv))
		for i, a := range argv {
			q[i] = strconv.Quote(a)
		}
		files[agent.ImageHealthCheck] = ptr("[" + strings.Join(q, ",") + "]\n")
	}
	return f.setData(t, serial, files)
}

// layout is a stand-in /etc and a run directory for real loop and
// overlay mounts, unmounted at the end.
func layout(t *testing.T) *mount.Layout {
	t.Helper()
	testenv.Root(t, "loop, squashfs and overlay mounts")
	dir := t.TempDir()
	l := &mount.Layout{Target: filepath.Join(dir, "etc"), RunDir: filepath.Join(dir, "run")}
	if err := os.MkdirAll(l.Target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.Target, "hostname"), []byte("rootfs\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mount.Unmount(*l); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return l
}

// bootIDs is the kernel's boot ID as the test wants it: a reboot is a new
// one.
type bootIDs struct{ id string }

func (b *bootIDs) get() (string, error) { return b.id, nil }

func mounted(t *testing.T, l *mount.Layout) uint64 {
	t.Helper()
	rec, err := mount.Current(*l)
	if err != nil || rec == nil {
		t.Fatalf("nothing mounted: %v", err)
	}
	return rec.Generation
}

func latestReport(t *testing.T, st *state.Dir) coreapi.Report {
	t.Helper()
	r, err := st.LatestReport()
	if err != nil || r == nil {
		t.Fatalf("no report kept: %v", err)
	}
	if err := r.Report.Check(); err != nil {
		t.Fatalf("the report kept breaks the contract: %v: %+v", err, r.Report)
	}
	return r.Report
}

// wantFailed checks the ending of a failed health check: the previous
// generation mounted and current, the failed one bad, the high-water mark
// at the failed one, and the report saying so with why.
func wantFailed(t *testing.T, st *state.Dir, l *mount.Layout, failed, previous uint64, why ...string) {
	t.Helper()
	if got := mounted(t, l); got != previous {
		t.Fatalf("generation %d mounted after the failure of %d, want %d", got, failed, previous)
	}
	if cur, _, _ := st.Pointer(state.Current); !strings.HasPrefix(cur.Name, fmt.Sprintf("%020d-", previous)) {
		t.Fatalf("current is %s, want generation %d", cur.Name, previous)
	}
	if !st.IsBad(failed) || st.IsBad(previous) {
		t.Fatalf("bad generations: %d %v, %d %v", failed, st.IsBad(failed), previous, st.IsBad(previous))
	}
	if hw := generation(t, st); hw != failed {
		t.Fatalf("high-water mark %d after the failure of %d: it must not go back", hw, failed)
	}
	if tr, err := st.Trial(); err != nil || tr != nil {
		t.Fatalf("trial after the failure: %+v %v", tr, err)
	}
	r := latestReport(t, st)
	if r.Generation != failed || r.State != coreapi.StateFailed || r.Running != previous || r.BootID == "" {
		t.Fatalf("report %+v", r)
	}
	for _, w := range why {
		if !strings.Contains(r.Error, w) {
			t.Errorf("the report's error %q lacks %q", r.Error, w)
		}
	}
}

// A new generation whose own health check fails (exit 1 with output): the
// previous one is mounted again, the failed one marked bad and reported
// with the output; core's offer of it again is neither mounted nor
// fetched in a loop; a newer generation whose check passes installs and
// is healthy; the high-water mark never goes down.
func TestHealthCheckFailsThenANewerGenerationPasses(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0161")
	l := layout(t)
	boot := &bootIDs{"boot-1"}
	a := newAgent(t, st, agent.Options{Layout: l, Health: agent.Health{BootID: boot.get}})
	if _, err := a.Mount(ctx, true); err != nil {
		t.Fatal(err)
	}
	if r := latestReport(t, st); r.Generation != 1 || r.State != coreapi.StateHealthy || r.BootID != "boot-1" {
		t.Fatalf("generation 1 mounted without a check: report %+v", r)
	}

	bad := f.healthCheck(t, dev.Serial, "broken", "/bin/sh", "-c", "echo the broker URL is htp://typo; exit 1")
	res, err := a.Update(ctx)
	if !errors.Is(err, agent.ErrHealthCheck) || res == nil || res.Generation != bad {
		t.Fatalf("update to %d with a failing check: %+v %v", bad, res, err)
	}
	wantFailed(t, st, l, bad, 1, "exit status 1", "the broker URL is htp://typo")
	if s := st.Status(); !strings.Contains(s.LastError, "htp://typo") {
		t.Fatalf("status %+v", s)
	}
	// Core hears of it, with the check's output.
	if sent, err := a.SendReport(ctx); !sent || err != nil {
		t.Fatalf("report the failure: %v %v", sent, err)
	}
	if got := f.coreReport(t, dev.Serial); got == nil || got.State != coreapi.StateFailed || got.Generation != bad || got.Running != 1 ||
		!strings.Contains(got.Error, "htp://typo") {
		t.Fatalf("core keeps %+v", got)
	}

	// Core still offers the bad generation: it answers 304 to the ETag
	// kept, and nothing changes.
	if res, err := a.Update(ctx); err != nil || res != nil {
		t.Fatalf("the bad generation offered again: %+v %v", res, err)
	}
	// Even sent again in full (the ETag forgotten), it is not installed.
	if err := st.UpdateStatus(func(s *state.Status) { s.ETag = "" }); err != nil {
		t.Fatal(err)
	}
	if res, err := a.Update(ctx); err != nil || res != nil {
		t.Fatalf("the bad generation sent again: %+v %v", res, err)
	}
	if got := mounted(t, l); got != 1 || generation(t, st) != bad {
		t.Fatalf("after the bad generation was sent again: mounted %d, high-water %d", got, generation(t, st))
	}
	if s := st.Status(); s.ETag != coreapi.ETag(bad, s.ETag[len(s.ETag)-17:len(s.ETag)-1]) {
		t.Fatalf("the ETag kept is %q, not the bad generation's", s.ETag)
	}

	// A newer generation whose check passes (and sees its generation).
	good := f.healthCheck(t, dev.Serial, "fixed", "/bin/sh", "-c", `test "$PROV_GENERATION" = `+strconv.FormatUint(bad+1, 10))
	if res, err := a.Update(ctx); err != nil || res == nil || res.Generation != good {
		t.Fatalf("update to %d: %+v %v", good, res, err)
	}
	if got := mounted(t, l); got != good || generation(t, st) != good {
		t.Fatalf("mounted %d, high-water %d, want %d", got, generation(t, st), good)
	}
	if r := latestReport(t, st); r.Generation != good || r.State != coreapi.StateHealthy || r.Running != good {
		t.Fatalf("report %+v", r)
	}
	if h, err := st.Healthy(); err != nil || h.Generation != good {
		t.Fatalf("healthy %+v %v", h, err)
	}
	if sent, err := a.SendReport(ctx); !sent || err != nil {
		t.Fatalf("report healthy: %v %v", sent, err)
	}
	if got := f.coreReport(t, dev.Serial); got == nil || got.State != coreapi.StateHealthy || got.Generation != good {
		t.Fatalf("core keeps %+v", got)
	}
	// The bad bundle is pruned with the install.
	entries, _ := os.ReadDir(st.File(state.ImagesDir))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), fmt.Sprintf("%020d-", bad)) {
			t.Fatalf("the bad bundle %s is still kept", e.Name())
		}
	}
}

// A check that hangs is killed at the timeout, its whole process group
// with it (a child it started in the background too), and fails.
func TestHealthCheckThatHangsIsKilled(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0162")
	l := layout(t)
	a := newAgent(t, st, agent.Options{Layout: l, Health: agent.Health{Timeout: time.Second, BootID: (&bootIDs{"b"}).get}})
	if _, err := a.Mount(ctx, true); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	hangs := f.healthCheck(t, dev.Serial, "hangs", "/bin/sh", "-c", "sleep 600 & echo $! > "+pidFile+"; echo waiting for the broker; wait")
	if _, err := a.Update(ctx); !errors.Is(err, agent.ErrHealthCheck) {
		t.Fatalf("update with a check that hangs: %v", err)
	}
	wantFailed(t, st, l, hangs, 1, "did not finish within 1s", "waiting for the broker")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// Killed with its group: gone (or a zombie until init reaps it).
	if err := testenv.WaitFor(10*time.Second, func() error {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if errors.Is(err, os.ErrNotExist) || (err == nil && strings.Contains(string(stat), ") Z ")) {
			return nil
		}
		return fmt.Errorf("the check's child %d still runs: %s %w", pid, stat, err)
	}); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal(err)
	}
}

// A reboot before the check passed: the boot-time mount (deferred check,
// as the units run it) of the next boot counts the boot and falls back.
// With two attempts allowed, the first reboot tries the generation again.
func TestRebootBeforeTheCheckPassedFallsBack(t *testing.T) {
	f := newFleet(t, "")
	st, dev := f.enroll(t, "1813BBBK0163")
	l := layout(t)
	boot := &bootIDs{"boot-1"}
	bootMount := func(attempts int) error {
		a := newAgent(t, st, agent.Options{Layout: l, Health: agent.Health{BootID: boot.get, Attempts: attempts}})
		_, err := a.Mount(ctx, false)
		return err
	}
	if err := bootMount(1); err != nil {
		t.Fatal(err)
	}
	// No check to run: healthy at once, even deferred (a reboot now must
	// not fail it).
	if h, err := st.Healthy(); err != nil || h.Generation != 1 {
		t.Fatalf("generation 1 mounted with no check: healthy %+v %v", h, err)
	}
	if tr, err := st.Trial(); err != nil || tr != nil {
		t.Fatalf("generation 1 mounted with no check: trial %+v %v", tr, err)
	}
	// The daemon installs (it does not mount); the remount unit mounts,
	// leaving the check to the daemon; the device restarts before it ran.
	next := f.healthCheck(t, dev.Serial, "slow", "/bin/true")
	if res, err := newAgent(t, st, agent.Options{}).Update(ctx); err != nil || res == nil || res.Generation != next {
		t.Fatalf("install %d: %+v %v", next, res, err)
	}
	if err := bootMount(2); err != nil {
		t.Fatal(err)
	}
	if tr, err := st.Trial(); err != nil || tr == nil || tr.Generation != next || tr.Attempts != 1 || mounted(t, l) != next {
		t.Fatalf("trial %+v %v", tr, err)
	}
	if r := latestReport(t, st); r.State != coreapi.StateMounted || r.Generation != next {
		t.Fatalf("report %+v", r)
	}
	boot.id = "boot-2"
	if err := bootMount(2); err != nil {
		t.Fatal(err)
	}
	if tr, err := st.Trial(); err != nil || tr == nil || tr.Attempts != 2 || tr.BootID != "boot-2" || mounted(t, l) != next {
		t.Fatalf("second attempt of two: trial %+v %v", tr, err)
	}
	boot.id = "boot-3"
	if err := bootMount(2); !errors.Is(err, agent.ErrHealthCheck) {
		t.Fatalf("the boot-time mount that fell back: %v, want it to fail with the reason", err)
	}
	wantFailed(t, st, l, next, 1, "restarted before the health check", "2 boots")
	// The next boot mounts generation 1 with no trial, and the report
	// stays the failure's.
	boot.id = "boot-4"
	if err := bootMount(2); err != nil || mounted(t, l) != 1 {
		t.Fatalf("the boot after the fallback: %v", err)
	}
	if r := latestReport(t, st); r.State != coreapi.StateFailed || r.Generation != next {
		t.Fatalf("report after the next boot %+v", r)
	}
}
