package server

import (
	"math"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/fleetprov/prov/pki"
)

// limiter holds one token bucket per identity (per remote address for
// unauthenticated routes), forgetting those idle for a while so that a
// flood of identities cannot grow it without bound.
type limiter struct {
	limits map[pki.Role]Limit
	mu     sync.Mutex
	seen   map[string]*bucket
	sweep  time.Time
}

type bucket struct {
	l    *rate.Limiter
	used time.Time
}

const (
	maxBuckets  = 1 << 17
	idleForget  = 10 * time.Minute
	anonRate    = 20
	anonBurst   = 40
	sweepPeriod = time.Minute
)

func newLimiter(limits map[pki.Role]Limit) *limiter {
	return &limiter{limits: limits, seen: map[string]*bucket{}}
}

// allow takes a token for the caller; when none is left it returns the
// seconds to wait and the limit it is over (for the refusal to name).
func (l *limiter) allow(id pki.Identity, r *http.Request) (int, Limit, bool) {
	key, lim := "", Limit{Rate: anonRate, Burst: anonBurst}
	if id.IsZero() {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		key = "ip:" + host
	} else {
		key = id.String()
		if v, ok := l.limits[id.Role]; ok {
			lim = v
		}
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.sweep) > sweepPeriod || len(l.seen) >= maxBuckets {
		for k, b := range l.seen {
			if now.Sub(b.used) > idleForget || len(l.seen) >= maxBuckets {
				delete(l.seen, k)
			}
		}
		l.sweep = now
	}
	b, ok := l.seen[key]
	if !ok {
		b = &bucket{l: rate.NewLimiter(rate.Limit(lim.Rate), lim.Burst)}
		l.seen[key] = b
	}
	b.used = now
	res := b.l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return int(math.Ceil(d.Seconds())), lim, false
	}
	return 0, lim, true
}
