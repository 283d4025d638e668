package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetprov/prov/core/bundlecache"
)

type metrics struct {
	reg           *prometheus.Registry
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	registrations *prometheus.CounterVec
	collisions    prometheus.Counter
	notifications *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, cache *bundlecache.Cache) *metrics {
	m := &metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_requests_total", Help: "API requests by route and status class.",
		}, []string{"route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "prov_core_request_seconds", Help: "API request latency by route.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"route"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_registrations_total", Help: "Device registrations by result (created, existing, collision, invalid).",
		}, []string{"result"}),
		collisions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "prov_core_serial_collisions_total", Help: "Hardware IDs refused because another one already has their serial.",
		}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "prov_core_notifications_total", Help: "Update notifications by result (published, failed, dropped).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.requests, m.duration, m.registrations, m.collisions, m.notifications,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cache != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "prov_core_bundle_builds_total", Help: "Bundles built and signed."},
			func() float64 { return float64(cache.Stats().Builds) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "prov_core_bundle_cache_hits_total", Help: "Bundles served from the cache."},
				func() float64 { return float64(cache.Stats().Hits) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prov_core_bundle_cache_bytes", Help: "Bytes of bundles in the cache."},
				func() float64 { return float64(cache.Stats().Bytes) }))
	}
	return m
}
