// Package bundlecache keeps signed bundles by (serial, generation): each is
// built and signed once, whoever asks first, and served from memory after
// that; concurrent requests for one missing bundle wait for one build. The
// cache is bounded in bytes and evicts the least recently used. A bundle
// is a pure function of the record, so an evicted one is rebuilt
// byte-identical.
package bundlecache

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetprov/prov/core/contract/coreapi"
	"github.com/fleetprov/prov/core/contract/imagespec"
	"github.com/fleetprov/prov/core/imagebuild"
	"github.com/fleetprov/prov/pki/signedimage"
)

// Bundle is a built, signed bundle.
type Bundle struct {
	Serial     string
	Generation uint64
	Bytes      []byte
	SHA256     string // of the image, as the statement says
	ETag       string
}

// Stats counts the cache's work.
type Stats struct {
	Hits, Builds, Evictions uint64
	Bytes                   int64
	Entries                 int
}

// Cache is the bundle cache.
type Cache struct {
	rules    imagespec.Rules
	maxBytes int64

	mu       sync.Mutex
	signer   *signedimage.Signer
	epoch    uint64     // how many times the signer was replaced
	lru      *list.List // of *entry, most recent first
	byKey    map[string]*list.Element
	building map[string]*call
	stats    Stats
}

type entry struct {
	key string
	b   *Bundle
}

type call struct {
	done chan struct{}
	b    *Bundle
	err  error
}

// New makes a cache of at most maxBytes of bundles.
func New(signer *signedimage.Signer, rules imagespec.Rules, maxBytes int64) *Cache {
	return &Cache{signer: signer, rules: rules, maxBytes: maxBytes, lru: list.New(),
		byKey: map[string]*list.Element{}, building: map[string]*call{}}
}

func key(serial string, gen uint64) string { return serial + "/" + strconv.FormatUint(gen, 10) }

// SetSigner makes s sign every bundle built from now on and drops the ones
// signed before: after the signer's certificate is renewed, devices get
// the new chain, not the old one, which ends sooner.
func (c *Cache) SetSigner(s *signedimage.Signer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.signer = s
	c.epoch++
	c.stats.Evictions += uint64(c.lru.Len()) //nolint:gosec // a length, never negative
	c.lru.Init()
	c.byKey = map[string]*list.Element{}
	c.stats.Bytes = 0
}

// Get returns the bundle of rec (by its serial and generation), building
// and signing it if no one has yet.
func (c *Cache) Get(rec *imagebuild.Record) (*Bundle, error) {
	k := key(rec.Serial, rec.Generation)
	c.mu.Lock()
	if el, ok := c.byKey[k]; ok {
		c.lru.MoveToFront(el)
		c.stats.Hits++
		b := el.Value.(*entry).b //nolint:errcheck // the list holds only *entry
		c.mu.Unlock()
		return b, nil
	}
	// A build by the signer before the current one is not waited for.
	bk := k + "@" + strconv.FormatUint(c.epoch, 10)
	if cl, ok := c.building[bk]; ok {
		c.mu.Unlock()
		<-cl.done
		return cl.b, cl.err
	}
	cl := &call{done: make(chan struct{})}
	c.building[bk] = cl
	signer, epoch := c.signer, c.epoch
	c.mu.Unlock()

	cl.b, cl.err = c.build(rec, signer)

	c.mu.Lock()
	delete(c.building, bk)
	if cl.err == nil {
		c.stats.Builds++
		if epoch == c.epoch { // else signed by a signer since replaced
			c.add(k, cl.b)
		}
	}
	c.mu.Unlock()
	close(cl.done)
	return cl.b, cl.err
}

func (c *Cache) build(rec *imagebuild.Record, signer *signedimage.Signer) (*Bundle, error) {
	bundle, img, err := imagebuild.BuildBundle(rec, c.rules, signer)
	if err != nil {
		return nil, fmt.Errorf("bundle of %s generation %d: %w", rec.Serial, rec.Generation, err)
	}
	sum := sha256.Sum256(img)
	digest := hex.EncodeToString(sum[:])
	return &Bundle{Serial: rec.Serial, Generation: rec.Generation, Bytes: bundle, SHA256: digest, ETag: coreapi.ETag(rec.Generation, digest)}, nil
}

func (c *Cache) add(k string, b *Bundle) {
	c.byKey[k] = c.lru.PushFront(&entry{key: k, b: b})
	c.stats.Bytes += int64(len(b.Bytes))
	for c.stats.Bytes > c.maxBytes && c.lru.Len() > 1 {
		last := c.lru.Back()
		e := last.Value.(*entry) //nolint:errcheck // the list holds only *entry
		c.lru.Remove(last)
		delete(c.byKey, e.key)
		c.stats.Bytes -= int64(len(e.b.Bytes))
		c.stats.Evictions++
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = c.lru.Len()
	return s
}

// Collectors are the cache's metrics: builds, hits and bytes held.
func (c *Cache) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "prov_core_bundle_builds_total", Help: "Bundles built and signed."},
			func() float64 { return float64(c.Stats().Builds) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "prov_core_bundle_cache_hits_total", Help: "Bundles served from the cache."},
			func() float64 { return float64(c.Stats().Hits) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "prov_core_bundle_cache_bytes", Help: "Bytes of bundles in the cache."},
			func() float64 { return float64(c.Stats().Bytes) }),
	}
}
