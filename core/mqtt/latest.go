package mqtt

import (
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// latest keeps the last notification published on each device topic, for
// a device that subscribes after it: what a retained message would give,
// without mochi's retained store. Mochi's expiry loop copies that store
// whole once a second (Packets.GetAll), under the lock every retained
// publish takes: with a fleet's worth of retained notifications that was
// a fifth to a third of core's CPU during a 100,000-device change, a
// burst of garbage every second, and the cause of most of another
// device's slow fetches meanwhile (BenchmarkReprovision's trace); it
// went on once a second after the change too. Here a notification costs
// one map entry, read only when a device subscribes.
type latest struct {
	mu      sync.Mutex
	byTopic map[string][]byte
}

func (l *latest) put(topic string, payload []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byTopic == nil {
		l.byTopic = map[string][]byte{}
	}
	l.byTopic[topic] = payload
}

func (l *latest) get(topic string) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.byTopic[topic]
	return p, ok
}

// latestHook sends a subscriber the latest notification of each topic it
// was granted. Mochi calls it after adding the subscription and before
// the SUBACK, which MQTT allows (3.1.1 §3.8.4, 5.0 §3.8.4): a
// notification published meanwhile reaches the subscription itself, so
// none is missed; at worst one comes twice, which a device takes as the
// same generation.
type latestHook struct {
	mochi.HookBase
	b *Broker
}

func (h *latestHook) ID() string { return "prov-latest-notification" }

func (h *latestHook) Provides(b byte) bool { return b == mochi.OnSubscribed }

func (h *latestHook) OnSubscribed(_ *mochi.Client, pk packets.Packet, reasonCodes []byte) {
	for i, f := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] > packets.CodeGrantedQos2.Code {
			continue
		}
		if payload, ok := h.b.latest.get(f.Filter); ok {
			if err := h.b.srv.Publish(f.Filter, payload, false, 1); err != nil {
				h.b.log.Warn("cannot send the latest notification to a new subscriber; it will poll", "topic", f.Filter, "err", err)
			}
		}
	}
}
