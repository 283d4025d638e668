package registry

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
)

// fleetCollector exports the fleet view of every configured group as
// gauges, computed at a scrape from the store (one pass over each group)
// and kept for fleetMetricsTTL, so that scrapes from several Prometheus
// servers, or a fast one, do not each read the whole fleet.
type fleetCollector struct {
	r       *Registry
	devices *prometheus.Desc
	stale   *prometheus.Desc
	held    *prometheus.Desc
	behind  *prometheus.Desc

	mu     sync.Mutex
	at     time.Time
	fleets []*coreapi.Fleet
}

const fleetMetricsTTL = 30 * time.Second

func newFleetCollector(r *Registry) *fleetCollector {
	return &fleetCollector{r: r,
		devices: prometheus.NewDesc("prov_core_fleet_devices", "Devices of a group by the state of their latest report (none: never reported).", []string{"group", "state"}, nil),
		stale:   prometheus.NewDesc("prov_core_fleet_stale_devices", "Devices of a group without a report for the stale period (26 h), or never.", []string{"group"}, nil),
		held:    prometheus.NewDesc("prov_core_fleet_held_devices", "Devices of a group a rollout holds at earlier data.", []string{"group"}, nil),
		behind:  prometheus.NewDesc("prov_core_fleet_behind_devices", "Devices of a group that report an older generation than core has for them, or none.", []string{"group"}, nil),
	}
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.devices
	ch <- c.stale
	ch <- c.held
	ch <- c.behind
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	for _, f := range c.read() {
		for _, s := range append([]coreapi.ReportState{"none"}, coreapi.ReportStates...) {
			ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(f.States[s]), f.Group, string(s))
		}
		ch <- prometheus.MustNewConstMetric(c.stale, prometheus.GaugeValue, float64(f.Stale), f.Group)
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(f.Held), f.Group)
		ch <- prometheus.MustNewConstMetric(c.behind, prometheus.GaugeValue, float64(f.Behind), f.Group)
	}
}

// read is every group's fleet view, at most fleetMetricsTTL old; a group
// the store cannot read now is left out (and logged).
func (c *fleetCollector) read() []*coreapi.Fleet {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.fleets != nil && now.Sub(c.at) < fleetMetricsTTL {
		return c.fleets
	}
	var groups []string
	for g := range c.r.policy.Groups() {
		groups = append(groups, g)
	}
	slices.Sort(groups)
	out := []*coreapi.Fleet{}
	for _, g := range groups {
		f, err := c.r.Fleet(g, 0, now)
		if err != nil {
			c.r.log.Warn("fleet metrics: cannot read the group", "group", g, "err", err)
			continue
		}
		out = append(out, f)
	}
	c.fleets, c.at = out, now
	return out
}
