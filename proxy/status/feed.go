package status

import (
	"sync"

	"github.com/fleetprov/prov/proxy/auditlog"
)

// FeedQueue is how many records a console may fall behind by before it is
// dropped.
const FeedQueue = 256

// Feed passes each record of the factory record, as it is written, to the
// consoles watching (server-sent events). Observe runs on the enrollment
// path, so it never waits: each subscriber has a bounded queue, and one
// that falls behind (a stalled browser, a slow link) is dropped; its
// stream ends, and the page reconnects and reloads the state, which is
// exact, from the record.
type Feed struct {
	mu     sync.Mutex
	subs   map[*Sub]struct{}
	closed bool // Close: no subscriber any more
}

// Sub is one console's subscription.
type Sub struct {
	// C carries the records; it is closed when the subscriber is dropped
	// or unsubscribes.
	C      chan auditlog.Record
	closed bool
}

// NewFeed makes a feed without subscribers.
func NewFeed() *Feed { return &Feed{subs: map[*Sub]struct{}{}} }

// Subscribe adds a subscriber; Unsubscribe it when done.
func (f *Feed) Subscribe() *Sub {
	s := &Sub{C: make(chan auditlog.Record, FeedQueue)}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs[s] = struct{}{}
	if f.closed {
		f.drop(s)
	}
	return s
}

// Close drops every subscriber, and any later one at once: the proxy is
// stopping, and its HTTP server waits for open streams to end.
func (f *Feed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for s := range f.subs {
		f.drop(s)
	}
}

// Unsubscribe removes a subscriber and closes its channel (once).
func (f *Feed) Unsubscribe(s *Sub) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drop(s)
}

func (f *Feed) drop(s *Sub) {
	delete(f.subs, s)
	if !s.closed {
		s.closed = true
		close(s.C)
	}
}

// Observe passes r to every subscriber without waiting; one whose queue
// is full is dropped.
func (f *Feed) Observe(r auditlog.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		select {
		case s.C <- r:
		default:
			f.drop(s)
		}
	}
}

// Subscribers is how many consoles watch now.
func (f *Feed) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}
