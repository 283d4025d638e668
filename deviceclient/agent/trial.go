package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
)

// The trial (docs/device.md): a generation mounted for the first time is
// on trial until its health check passes. The trial record in the state
// directory names it and the boot it was mounted in; a mount in a later
// boot that finds the trial not passed counts a boot, and after
// Health.Attempts of them fails the generation. A failed generation is
// marked bad, the previous image is made current again (and mounted), and
// the high-water mark stays where it is: the failed generation is never
// installed or mounted again, only a newer one.

func (a *Agent) bootID() (string, error) {
	if a.o.Health.BootID != nil {
		return a.o.Health.BootID()
	}
	return readBootID()
}

// Mount mounts the current image over Layout and carries its trial: a
// trial from an earlier boot that did not pass counts that boot, and
// fails the generation after Health.Attempts (the previous image is
// mounted instead); an image not yet found healthy is put on trial; with
// check set, the health check runs at once (Settle), otherwise it is left
// to whoever settles it later (the daemon, after the boot), unless there is
// none to run. It returns what is mounted.
func (a *Agent) Mount(ctx context.Context, check bool) (*mount.Record, error) {
	if a.o.Layout == nil {
		return nil, errors.New("mount: no target")
	}
	boot, err := a.bootID()
	if err != nil {
		return nil, err
	}
	failed, err := a.countBoot(boot)
	if err != nil {
		return nil, err
	}
	in, err := a.VerifyCurrent()
	if err != nil {
		return nil, err
	}
	a.mountMu.Lock()
	rec, err := mount.Mount(*a.o.Layout, in)
	a.mountMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("mount generation %d: %w", in.Generation, err)
	}
	a.log.Info("image mounted", "generation", in.Generation, "target", a.o.Layout.Target)
	if err := a.beginTrial(in, boot); err != nil {
		return rec, err
	}
	if failed != "" {
		// Said by the boot-time unit's failure: worth a look, though the
		// device goes on with the previous generation.
		return rec, fmt.Errorf("%w: %s", ErrHealthCheck, failed)
	}
	if !check {
		// With no check to run, mounted is healthy now: left to the
		// daemon, a restart before it looked would fail the generation.
		if argv, err := a.healthCommand(in); err != nil || argv != nil {
			return rec, nil
		}
	}
	if _, err := a.Settle(ctx); err != nil {
		if cur, cerr := mount.Current(*a.o.Layout); cerr == nil && cur != nil {
			rec = cur
		}
		return rec, err
	}
	return rec, nil
}

// countBoot is the boot counter: the current image on trial since an
// earlier boot has now been mounted in one more; past the attempts it
// fails. A current image marked bad (a crash in the middle of a fallback)
// is fallen back from again. failed says why, when it fell back.
func (a *Agent) countBoot(boot string) (failed string, err error) {
	cur, ok, err := a.st.Pointer(state.Current)
	if err != nil || !ok {
		return "", err
	}
	gen, _, _ := cur.Version()
	if a.st.IsBad(gen) {
		reason := fmt.Sprintf("generation %d was marked bad before a restart", gen)
		_, err := a.fallBack(cur, gen, reason)
		return reason, err
	}
	tr, err := a.st.Trial()
	if err != nil || tr == nil || tr.Image != cur.Name || tr.BootID == boot {
		return "", err
	}
	if tr.Attempts < a.attempts() {
		tr.Attempts++
		tr.BootID = boot
		a.log.Warn("the device restarted during the trial of a generation; trying it again",
			"generation", tr.Generation, "attempt", tr.Attempts, "of", a.attempts())
		return "", a.st.SetTrial(*tr)
	}
	reason := fmt.Sprintf("the device restarted before the health check of generation %d passed (mounted in %d boot%s)",
		tr.Generation, tr.Attempts, plural(tr.Attempts))
	_, err = a.fallBack(cur, tr.Generation, reason)
	return reason, err
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func (a *Agent) attempts() int { return max(a.o.Health.Attempts, 1) }

// beginTrial puts a mounted image on trial unless it was found healthy
// already or is on trial in this boot.
func (a *Agent) beginTrial(in *install.Installed, boot string) error {
	h, err := a.st.Healthy()
	if err != nil {
		return err
	}
	if h.Image == in.Name {
		return nil
	}
	tr, err := a.st.Trial()
	if err != nil {
		return err
	}
	if tr != nil && tr.Image == in.Name {
		return nil // counted by countBoot
	}
	if err := a.st.SetTrial(state.Trial{Image: in.Name, Generation: in.Generation, BootID: boot, Attempts: 1, Started: a.now().UTC()}); err != nil {
		return err
	}
	a.record(coreapi.Report{Generation: in.Generation, State: coreapi.StateMounted, Running: in.Generation})
	return nil
}

// Settle runs the health check of the generation on trial in this boot,
// if there is one: passed, the generation is healthy; failed, it is failed
// (fallBack) and the previous image is mounted if Layout is set (the mount
// units mount it otherwise: the current pointer moved). With no check
// configured, mounted is healthy. The result is nil when there was
// nothing to check.
func (a *Agent) Settle(ctx context.Context) (*CheckResult, error) {
	boot, err := a.bootID()
	if err != nil {
		return nil, err
	}
	tr, err := a.st.Trial()
	if err != nil || tr == nil {
		return nil, err
	}
	// Only a trial of this boot is settled: one from an earlier boot is
	// the boot-time mount's to count. This boot's is the one whose image
	// is mounted now, where that can be seen (/run, where the mounts are
	// kept, is a tmpfs); otherwise the one with this boot's ID. (The boot
	// ID alone is not enough: a sandbox with a /proc of its own, as the
	// daemon's unit has, sees the kernel's, where a container's init may
	// have put another over it for the rest of the container.)
	if l := a.observed(); l != nil {
		if k, err := mount.Observe(*l); err != nil || k == nil || k.Lower != tr.Image {
			a.log.Info("the generation on trial is not mounted now; its trial is not settled here",
				"generation", tr.Generation, "image", tr.Image, "mounted", k, "err", err)
			return nil, err
		}
	} else if tr.BootID != boot {
		a.log.Info("the generation on trial was mounted in another boot; its trial is not settled here",
			"generation", tr.Generation, "boot", tr.BootID, "now", boot)
		return nil, nil
	}
	cur, ok, err := a.st.Pointer(state.Current)
	if err != nil {
		return nil, err
	}
	if !ok || cur.Name != tr.Image {
		// Superseded: another image is current, whose mount starts its
		// own trial.
		return nil, a.st.EndTrial()
	}
	in, err := a.VerifyCurrent()
	if err != nil {
		return nil, err
	}
	argv, err := a.healthCommand(in)
	if err != nil {
		// An image whose check cannot be read fails it.
		res := &CheckResult{Err: fmt.Errorf("%w: %w", ErrHealthCheck, err)}
		return res, a.failTrial(cur, in.Generation, res.Err)
	}
	res := &CheckResult{}
	if argv != nil {
		a.log.Info("health check", "generation", in.Generation, "command", argv, "timeout", a.o.Health.Timeout)
		*res = RunCheck(ctx, argv, a.o.Health.Timeout, []string{
			"PROV_SERIAL=" + a.dev.Serial, "PROV_GENERATION=" + strconv.FormatUint(in.Generation, 10)})
		if ctx.Err() != nil {
			return res, ctx.Err() // stopped, not failed: the trial goes on
		}
	}
	if res.Err != nil {
		return res, a.failTrial(cur, in.Generation, res.Err)
	}
	if err := a.st.SetHealthy(state.Healthy{Image: in.Name, Generation: in.Generation, At: a.now().UTC()}); err != nil {
		return res, err
	}
	if err := a.st.EndTrial(); err != nil {
		return res, err
	}
	a.log.Info("generation healthy", "generation", in.Generation, "checked", argv != nil, "took", res.Duration)
	a.record(coreapi.Report{Generation: in.Generation, State: coreapi.StateHealthy, Running: in.Generation})
	return res, nil
}

// failTrial fails the generation on trial and mounts what fallBack made
// current, if this agent mounts.
func (a *Agent) failTrial(cur state.Image, gen uint64, reason error) error {
	a.log.Error("health check failed; falling back", "generation", gen, "err", reason)
	prev, err := a.fallBack(cur, gen, reason.Error())
	if err != nil {
		return errors.Join(reason, err)
	}
	if prev != nil && a.o.Layout != nil {
		a.mountMu.Lock()
		_, err := mount.Mount(*a.o.Layout, prev)
		a.mountMu.Unlock()
		if err != nil {
			return errors.Join(reason, fmt.Errorf("mount generation %d again: %w", prev.Generation, err))
		}
		a.log.Info("image mounted", "generation", prev.Generation, "target", a.o.Layout.Target)
	}
	return reason
}

// fallBack fails generation gen (the image failed, current unless a newer
// one was installed since): it marks it bad, makes the previous image
// current again if it verifies and is not bad itself (and returns it),
// ends the trial, keeps core's ETag of the failed bundle so that core
// answers 304 rather than send it again, and reports the failure. With
// nothing to fall back to the image stays, not marked bad (it is all the
// device has): the failure is reported and the next boot tries it again.
// The high-water mark is not touched: it stays at the failed generation.
func (a *Agent) fallBack(failed state.Image, gen uint64, reason string) (*install.Installed, error) {
	prev, running, err := a.switchBack(failed, gen, reason)
	if err != nil {
		return nil, err
	}
	now := a.now().UTC()
	if err := a.st.UpdateStatus(func(s *state.Status) {
		s.LastError, s.ErrorAt, s.Refusal, s.RefusalStep, s.RefusalCheck = reason, now, "", 0, ""
		if _, sha16, ok := failed.Version(); ok && prev != nil {
			s.ETag = coreapi.ETag(gen, sha16)
		}
	}); err != nil {
		return prev, err
	}
	a.record(coreapi.Report{Generation: gen, State: coreapi.StateFailed, Running: running, Error: reason})
	return prev, nil
}

// switchBack is fallBack's part under the state directory's lock.
func (a *Agent) switchBack(failed state.Image, gen uint64, reason string) (prev *install.Installed, running uint64, err error) {
	unlock, err := a.st.Lock()
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	if err := a.st.EndTrial(); err != nil {
		return nil, 0, err
	}
	cur, ok, err := a.st.Pointer(state.Current)
	if err != nil || !ok {
		return nil, 0, err
	}
	running, _, _ = cur.Version()
	if cur.Name != failed.Name {
		// A newer image was installed meanwhile: it is on its own trial.
		return nil, running, a.st.MarkBad(state.Bad{Generation: gen, Image: failed.Name, Reason: reason, At: a.now().UTC()})
	}
	p, ok, err := a.st.Pointer(state.Previous)
	if err != nil {
		return nil, 0, err
	}
	if !ok || p.Name == cur.Name {
		a.log.Error("no previous image to fall back to; the failed one stays", "generation", gen)
		return nil, running, nil
	}
	if pg, _, _ := p.Version(); a.st.IsBad(pg) {
		a.log.Error("the previous image failed too; the failed one stays", "generation", gen, "previous", pg)
		return nil, running, nil
	}
	pin, err := install.Verify(p, a.o.Install)
	if err != nil {
		a.log.Error("the previous image does not verify; the failed one stays", "generation", gen, "err", err)
		return nil, running, nil
	}
	if err := a.st.MarkBad(state.Bad{Generation: gen, Image: failed.Name, Reason: reason, At: a.now().UTC()}); err != nil {
		return nil, 0, err
	}
	if err := a.st.SetPointer(state.Current, p.Name); err != nil {
		return nil, 0, err
	}
	// The previous pointer goes: it would name the bad image. The next
	// install sets it again, and prunes the bad bundle.
	if err := a.st.RemovePointer(state.Previous); err != nil {
		return nil, 0, err
	}
	if err := a.st.SetHealthy(state.Healthy{Image: p.Name, Generation: pin.Generation, At: a.now().UTC()}); err != nil {
		return nil, 0, err
	}
	// Last: the remount path unit watches this file.
	if err := a.st.SetInstalled(state.Installed{Image: p.Name, Generation: pin.Generation}); err != nil {
		return nil, 0, err
	}
	a.log.Warn("fell back to the previous image", "failed", gen, "generation", pin.Generation)
	return pin, pin.Generation, nil
}

// healthCommand is the check for an image: the one it names
// (ImageHealthCheck), else the device's.
func (a *Agent) healthCommand(in *install.Installed) ([]string, error) {
	data, ok, err := install.ReadFile(in, ImageHealthCheck)
	if err != nil {
		return nil, err
	}
	if ok {
		argv, err := ParseCommand(string(data))
		if err != nil {
			return nil, fmt.Errorf("the image's %s: %w", ImageHealthCheck, err)
		}
		if argv != nil {
			return argv, nil
		}
	}
	return a.o.Health.Command, nil
}

// observed is where the image is mounted, if this agent can tell.
func (a *Agent) observed() *mount.Layout {
	if a.o.Layout != nil {
		return a.o.Layout
	}
	return a.o.Observe
}
