package cli

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/internal/cmdline"
)

// rolloutFlags are the admin flags of rollout start and fleet.
type rolloutFlags struct {
	canary, percent, sizes cmdline.List
	minHealthy, maxFailed  float64
	waveTimeout, stale     time.Duration
}

// rolloutCommands are prov-core admin rollout's subcommands.
func (a *admin) rolloutCommands() []cmdline.Command {
	return []cmdline.Command{
		{Name: "start", Args: "GROUP PATH=VALUE... [--unset PATH]... [--canary SERIAL]... [--percent P]... | [--sizes N]... [--min-healthy P] [--max-failed P] [--wave-timeout D]",
			Short: "change a group's data in waves, each released once the one before reports healthy", Run: a.rolloutStart},
		{Name: "status", Args: "ID", Short: "a rollout and how each released wave is doing", Run: a.rolloutStatus},
		{Name: "list", Args: "GROUP", Short: "a group's rollouts, newest first", Run: a.rolloutList},
		{Name: "pause", Args: "ID [--reason TEXT]", Short: "release nothing more", Run: a.rolloutAction(coreapi.RoutePauseRollout)},
		{Name: "resume", Args: "ID [--reason TEXT]", Short: "go on (the wave's timeout starts again)", Run: a.rolloutAction(coreapi.RouteResumeRollout)},
		{Name: "force", Args: "ID [--reason TEXT]", Short: "release the next wave now, whatever the last one reports", Run: a.rolloutAction(coreapi.RouteForceRollout)},
		{Name: "abort", Args: "ID [--reason TEXT]", Short: "the group's data back as it was (a new version); held members never saw the change", Run: a.rolloutAction(coreapi.RouteAbortRollout)},
	}
}

func (a *admin) rolloutStart(ctx context.Context, _ *cmdline.Env, args []string) error {
	ch, err := a.change("rollout start", args)
	if err != nil {
		return err
	}
	req := coreapi.RolloutRequest{Set: ch.Set, Unset: ch.Unset, Canary: a.rollout.canary,
		Policy: coreapi.RolloutPolicy{MinHealthyPercent: a.rollout.minHealthy, MaxFailedPercent: a.rollout.maxFailed, WaveTimeoutSeconds: int(a.rollout.waveTimeout / time.Second)}}
	for _, p := range a.rollout.percent {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil {
			return fmt.Errorf("%w: --percent %q: want a number", cmdline.ErrUsage, p)
		}
		req.Percent = append(req.Percent, f)
	}
	for _, s := range a.rollout.sizes {
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%w: --sizes %q: want a number of boards", cmdline.ErrUsage, s)
		}
		req.Sizes = append(req.Sizes, n)
	}
	g, err := a.client.Group(ctx, args[0])
	if err != nil {
		return err
	}
	ro, err := a.client.StartRollout(ctx, args[0], g.Version, req)
	if err != nil {
		return err
	}
	return a.out.rollout(ro)
}

func rolloutArg(cmd string, args []string) (uint64, error) {
	if err := need(args, 1, cmd, "a rollout ID"); err != nil {
		return 0, err
	}
	id, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("%w: %s: %q is not a rollout ID", cmdline.ErrUsage, cmd, args[0])
	}
	return id, nil
}

func (a *admin) rolloutStatus(ctx context.Context, _ *cmdline.Env, args []string) error {
	id, err := rolloutArg("rollout status", args)
	if err != nil {
		return err
	}
	ro, err := a.client.Rollout(ctx, id)
	if err != nil {
		return err
	}
	return a.out.rollout(ro)
}

func (a *admin) rolloutList(ctx context.Context, _ *cmdline.Env, args []string) error {
	if err := need(args, 1, "rollout list", "a group"); err != nil {
		return err
	}
	l, err := a.client.GroupRollouts(ctx, args[0])
	if err != nil {
		return err
	}
	if a.out.json {
		return a.out.value(l, "")
	}
	tw := tabwriter.NewWriter(a.out.w, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "ID\tSTATE\tVERSIONS\tWAVES\tMEMBERS\tBY\tSTARTED\tREASON")
	for _, ro := range l.Rollouts {
		_, _ = fmt.Fprintf(tw, "%d\t%s\t%d→%d\t%d/%d\t%d\t%s\t%s\t%s\n", ro.ID, ro.State, ro.FromVersion, ro.ToVersion, ro.Released, len(ro.Waves),
			ro.Members, ro.CreatedBy, ro.CreatedAt.UTC().Format(time.RFC3339), ro.Reason)
	}
	return tw.Flush()
}

// rolloutAction is the command of one admin action: the rollout read
// for its rev, then the action if it is still there.
func (a *admin) rolloutAction(route coreapi.Route) func(ctx context.Context, _ *cmdline.Env, args []string) error {
	return func(ctx context.Context, _ *cmdline.Env, args []string) error {
		id, err := rolloutArg("rollout", args)
		if err != nil {
			return err
		}
		ro, err := a.client.Rollout(ctx, id)
		if err != nil {
			return err
		}
		if ro, err = a.client.RolloutAction(ctx, route, id, ro.Rev, a.reason); err != nil {
			return err
		}
		return a.out.rollout(ro)
	}
}

func (p printer) rollout(ro *coreapi.Rollout) error {
	if p.json {
		return p.value(ro, "")
	}
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintf(tw, "rollout\t%d of group %s, version %d → %d\n", ro.ID, ro.Group, ro.FromVersion, ro.ToVersion)
	state := string(ro.State)
	if ro.Reason != "" {
		state += ": " + ro.Reason
	}
	_, _ = fmt.Fprintf(tw, "state\t%s\n", state)
	if ro.AbortVersion != 0 {
		_, _ = fmt.Fprintf(tw, "aborted as\tversion %d, the data of version %d\n", ro.AbortVersion, ro.FromVersion)
	}
	_, _ = fmt.Fprintf(tw, "change\t%s\n", strings.Join(ro.Change, " "))
	_, _ = fmt.Fprintf(tw, "waves\t%d released of %d; %d members at the start, %d held now\n", ro.Released, len(ro.Waves), ro.Members, ro.Held)
	p2 := ro.Policy.WithDefaults()
	_, _ = fmt.Fprintf(tw, "policy\t%g%% healthy to go on, pause past %g%% failed or after %s\n", p2.MinHealthyPercent, p2.MaxFailedPercent,
		time.Duration(p2.WaveTimeoutSeconds)*time.Second)
	for i, w := range ro.Waves {
		what := fmt.Sprintf("%d more held members", w.Size)
		switch {
		case len(w.Serials) > 0:
			what = "canary " + strings.Join(w.Serials, " ")
		case w.Rest:
			what = "the rest"
		}
		line := what
		if i < len(ro.Status) {
			s := ro.Status[i]
			line += fmt.Sprintf(": %d members, %d healthy, %d failed, %d pending", s.Members, s.Healthy, s.Failed, s.Pending)
			for _, f := range s.Failures {
				line += fmt.Sprintf("; %s failed: %s", f.Serial, oneLine(f.Error))
			}
		} else {
			line += ": not released"
		}
		_, _ = fmt.Fprintf(tw, "wave %d\t%s\n", i, line)
	}
	return tw.Flush()
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func (a *admin) fleet(ctx context.Context, _ *cmdline.Env, _ []string) error {
	if a.group == "" {
		return fmt.Errorf("%w: fleet needs --group", cmdline.ErrUsage)
	}
	f, err := a.client.Fleet(ctx, a.group, a.rollout.stale)
	if err != nil {
		return err
	}
	if a.out.json {
		return a.out.value(f, "")
	}
	tw := tabwriter.NewWriter(a.out.w, 0, 0, 2, ' ', 0)
	_, _ = fmt.Fprintf(tw, "group\t%s, version %d, %d members (%d revoked)\n", f.Group, f.Version, f.Members, f.Revoked)
	_, _ = fmt.Fprintf(tw, "current\t%d healthy at the generation core has for them, %d behind, %d held by a rollout\n", f.Current, f.Behind, f.Held)
	last := "never"
	if !f.LastSeen.IsZero() {
		last = f.LastSeen.UTC().Format(time.RFC3339)
	}
	_, _ = fmt.Fprintf(tw, "stale\t%d without a report for %s (last report %s)\n", f.Stale, time.Duration(f.StaleAfterSeconds)*time.Second, last)
	gens := make([]string, 0, len(f.Generations))
	for g := range f.Generations {
		gens = append(gens, g)
	}
	sort.Strings(gens)
	for _, g := range gens {
		_, _ = fmt.Fprintf(tw, "running generation %s\t%d\n", g, f.Generations[g])
	}
	for _, s := range append([]coreapi.ReportState{"none"}, coreapi.ReportStates...) {
		if n := f.States[s]; n > 0 {
			_, _ = fmt.Fprintf(tw, "state %s\t%d\n", s, n)
		}
	}
	for _, x := range f.Failed {
		_, _ = fmt.Fprintf(tw, "failed\t%s: %s\n", x.Serial, oneLine(x.Error))
	}
	if f.Rollout != nil {
		_, _ = fmt.Fprintf(tw, "rollout\t%d %s, %d of %d waves released\n", f.Rollout.ID, f.Rollout.State, f.Rollout.Released, len(f.Rollout.Waves))
	}
	return tw.Flush()
}
