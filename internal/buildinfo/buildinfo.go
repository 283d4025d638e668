// Package buildinfo is when a binary's source was last changed: the time of
// the commit it was built from. A board without a real-time clock boots in
// 1970; no certificate it sees can have expired before its own binary was
// built, so this time is the lowest clock floor it has (pki.Floor). Every
// binary may link it: standard library only.
package buildinfo

import (
	"runtime/debug"
	"time"
)

// CommitTime is set at link time to the last commit's time (RFC 3339):
//
//	go build -ldflags "-X github.com/fleetprov/prov/internal/buildinfo.CommitTime=$(git log -1 --format=%cI)"
//
// make build does this. The commit's time rather than the build's keeps a
// build reproducible. A test may set it.
var CommitTime string

// Time is the binary's build time: CommitTime, else the commit time the Go
// toolchain stamps (vcs.time, when it stamps VCS information), else zero.
func Time() time.Time {
	if t, err := time.Parse(time.RFC3339, CommitTime); err == nil {
		return t.UTC()
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.time" {
				if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
					return t.UTC()
				}
			}
		}
	}
	return time.Time{}
}
