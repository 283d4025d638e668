package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/deviceclient/install"
	"github.com/fleetprov/prov/deviceclient/mount"
	"github.com/fleetprov/prov/deviceclient/state"
)

// Update asks core for the device's bundle (If-None-Match the current
// one), verifies and installs it, and, if the old image was mounted,
// mounts the new one. It returns nil and no error when core has nothing
// newer. The download is bounded in size (install.MaxBundleSize) and time
// (DownloadTimeout).
func (a *Agent) Update(ctx context.Context) (*install.Result, error) {
	etag, err := a.currentETag()
	if err != nil {
		return nil, a.fail(err)
	}
	dctx, cancel := context.WithTimeout(ctx, a.o.DownloadTimeout)
	defer cancel()
	body, tag, err := a.core.Bundle(dctx, a.dev.Serial, etag)
	now := a.now().UTC()
	if errors.Is(err, coreapi.ErrNotModified) {
		return nil, a.st.UpdateStatus(func(s *state.Status) { s.LastCheck, s.ETag, s.LastError = now, tag, "" })
	}
	if err != nil {
		return nil, a.fail(fmt.Errorf("fetch the bundle from %s: %w", a.dev.CoreURL, err))
	}
	defer func() { _ = body.Close() }()
	res, err := install.Install(a.st, body, a.o.Install)
	if errors.Is(err, install.ErrMarkedBad) {
		// Core offers again the generation that failed here (its ETag was
		// not the one kept): keep this one, so that core answers 304 until
		// it has a newer generation.
		a.log.Warn("core offers a generation that failed its health check here; not installed", "err", err, "etag", tag)
		return nil, a.st.UpdateStatus(func(s *state.Status) { s.LastCheck, s.ETag = now, tag })
	}
	if err != nil {
		if dctx.Err() != nil {
			err = fmt.Errorf("%w (%w: download deadline %s)", err, dctx.Err(), a.o.DownloadTimeout)
		}
		if gen, ok := etagGeneration(tag); ok && errors.Is(err, install.ErrRefused) {
			a.record(coreapi.Report{Generation: gen, State: coreapi.StateFailed, Running: a.running(), Error: err.Error()})
		}
		return nil, a.fail(err)
	}
	a.log.Info("bundle checked", "generation", res.Generation, "installed", res.Changed)
	if res.Changed {
		running := a.running()
		a.record(coreapi.Report{Generation: res.Generation, State: coreapi.StateVerified, Running: running})
		a.record(coreapi.Report{Generation: res.Generation, State: coreapi.StateInstalled, Running: running})
	}
	if err := a.st.UpdateStatus(func(s *state.Status) {
		s.LastCheck, s.ETag, s.LastError = now, tag, ""
		if res.Changed {
			s.LastUpdate = now
		}
	}); err != nil {
		return res, err
	}
	if res.Changed && a.o.Layout != nil {
		if err := a.remount(ctx); err != nil {
			return res, a.fail(err)
		}
	}
	return res, nil
}

// etagGeneration is the generation core's ETag of a bundle names (see
// coreapi.ETag), to report a bundle refused before its statement could be
// trusted: the report says which generation core offered.
func etagGeneration(tag string) (uint64, bool) {
	gen, _, ok := strings.Cut(strings.Trim(tag, `"`), "-")
	g, err := strconv.ParseUint(gen, 10, 64)
	return g, ok && err == nil && g > 0
}

// running is the generation mounted, as far as the device knows: the
// kernel's overlay if this agent mounts, else the image last found
// healthy (what the mount units mount).
func (a *Agent) running() uint64 {
	if a.o.Layout != nil {
		if rec, err := mount.Current(*a.o.Layout); err == nil && rec != nil {
			return rec.Generation
		}
		return 0
	}
	h, _ := a.st.Healthy()
	return h.Generation
}

// currentETag is the entity tag of the bundle the device has, for
// If-None-Match: the one core last sent, or, when there is none (the
// first update after enrolling, whose bundle came through the proxy, or
// after a fallback), the one core gives that bundle, made from its
// generation and digest, so that core answers 304 instead of sending the
// same bundle again. None without a current image.
func (a *Agent) currentETag() (string, error) {
	cur, ok, err := a.st.Pointer(state.Current)
	if err != nil || !ok {
		return "", err
	}
	if etag := a.st.Status().ETag; etag != "" {
		return etag, nil
	}
	if gen, sha16, ok := cur.Version(); ok {
		return coreapi.ETag(gen, sha16), nil
	}
	return "", nil
}

// remount mounts the current image if an older one is mounted, and puts
// it on trial: a one-shot update runs its health check at once, the
// daemon settles it in the background.
func (a *Agent) remount(ctx context.Context) error {
	rec, err := mount.Current(*a.o.Layout)
	if err != nil || rec == nil {
		return err
	}
	_, err = a.Mount(ctx, !a.daemon)
	return err
}

// VerifyCurrent verifies the current image again, for mounting.
func (a *Agent) VerifyCurrent() (*install.Installed, error) {
	cur, ok, err := a.st.Pointer(state.Current)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s has no current image", a.st.Path)
	}
	return install.Verify(cur, a.o.Install)
}

// Recover tidies the state directory after a crash (see install.Recover).
// If it had to fall back to the previous image, the fallback is logged,
// kept for FellBack, and in the status; and the ETag is forgotten, so the
// next check fetches the current generation again at once.
func (a *Agent) Recover() error {
	_, fb, err := install.Recover(a.st, a.o.Install)
	if err != nil || fb == nil {
		return err
	}
	a.fallback = fb
	a.log.Warn("current image refused; the previous one is current until the current one is fetched again",
		"refused", fb.Refused, "reason", fb.Reason.Error(), "generation", fb.Restored.Generation)
	now := a.now().UTC()
	return a.st.UpdateStatus(func(s *state.Status) { s.LastError, s.ErrorAt, s.ETag = fb.String(), now, "" })
}

// FellBack is the fallback Recover made, if any.
func (a *Agent) FellBack() *install.Fallback { return a.fallback }
