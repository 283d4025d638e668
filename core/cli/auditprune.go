package cli

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/fleetprov/prov/internal/cmdline"
)

// auditCommands are the commands of admin audit besides reading a trail.
func (a *admin) auditCommands() []cmdline.Command {
	return []cmdline.Command{
		{Name: "prune", Args: "--before DATE", Short: "remove events before DATE but each device's and group's newest of each action, leaving a summary", Run: a.auditPrune},
	}
}

// lookupOwn is the command of cmds that args' first word names, or nil.
func lookupOwn(cmds []cmdline.Command, args []string) *cmdline.Command {
	if len(args) == 0 {
		return nil
	}
	for i := range cmds {
		if cmds[i].Name == args[0] {
			return &cmds[i]
		}
	}
	return nil
}

// pruneDateLayouts are the forms --before takes: a day (its start, UTC)
// or an instant.
var pruneDateLayouts = []string{time.DateOnly, time.RFC3339}

func (a *admin) auditPrune(ctx context.Context, env *cmdline.Env, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: audit prune takes no arguments but --before DATE (got %q)", cmdline.ErrUsage, args[0])
	}
	before, err := parsePruneDate(a.before)
	if err != nil {
		return err
	}
	res, err := a.client.PruneAudit(ctx, before)
	if err != nil {
		return fmt.Errorf("audit prune --before %s: %w", a.before, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pruned %d events of %d devices and groups before %s\n", res.Events, res.Subjects, res.Before.UTC().Format(time.RFC3339))
	for _, action := range slices.Sorted(maps.Keys(res.Actions)) {
		fmt.Fprintf(&b, "  %-20s %d\n", action, res.Actions[action])
	}
	return a.out.value(res, b.String())
}

// parsePruneDate reads --before; a missing or malformed date is a usage
// error naming the flag. Whether it is in the past is core's to say, by
// its clock.
func parsePruneDate(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, fmt.Errorf("%w: audit prune needs --before DATE (2006-01-02, UTC, or RFC 3339)", cmdline.ErrUsage)
	}
	for _, layout := range pruneDateLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%w: --before %q: want a date, 2006-01-02 (UTC) or RFC 3339 (2006-01-02T15:04:05Z)", cmdline.ErrUsage, s)
}
