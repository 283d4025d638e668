package testenv

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Relay forwards TCP connections from a loopback port of its own to a real
// server, so that a test can take that server away and bring it back
// without it losing its port or state: the failure is injected around the
// real component, not inside it. While down, a connection is accepted and
// closed at once (as a load balancer with no backend does) and the open
// ones are cut.
type Relay struct {
	// Addr is the relay's own address (127.0.0.1:port).
	Addr string

	target string
	ln     net.Listener
	mu     sync.Mutex
	down   bool
	open   map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewRelay relays to target until the test ends.
func NewRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{Addr: ln.Addr().String(), target: target, ln: ln, open: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		r.Down()
		r.wg.Wait()
	})
	return r
}

// Down refuses new connections and cuts the open ones.
func (r *Relay) Down() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = true
	for c := range r.open {
		_ = c.Close()
	}
}

// Up forwards new connections again.
func (r *Relay) Up() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = false
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.serve(c)
	}
}

// serve forwards one connection both ways until either side closes.
func (r *Relay) serve(c net.Conn) {
	defer r.wg.Done()
	if !r.track(c) {
		_ = c.Close()
		return
	}
	defer r.untrack(c)
	up, err := net.Dial("tcp", r.target)
	if err != nil || !r.track(up) {
		if up != nil {
			_ = up.Close()
		}
		_ = c.Close()
		return
	}
	defer r.untrack(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}

// track adds c to the open connections, unless the relay is down.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return false
	}
	r.open[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.open, c)
}
