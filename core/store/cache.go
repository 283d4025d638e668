package store

import (
	"container/list"
	"sync"
)

// deviceCache keeps decoded device records for the read path, so serving a
// bundle does not decode JSON on every request. Entries carry the bbolt
// transaction ID they were read or written at; an older read never
// replaces a newer write, so the cache never goes back in time. It is
// bounded and forgets the least recently used.
type deviceCache struct {
	mu  sync.Mutex
	max int
	lru *list.List
	m   map[string]*list.Element
}

type cached struct {
	serial string
	txid   int
	d      *Device
}

func newDeviceCache(max int) *deviceCache {
	return &deviceCache{max: max, lru: list.New(), m: map[string]*list.Element{}}
}

func (c *deviceCache) get(serial string) (*Device, bool) {
	if c.max <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[serial]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(el)
	return el.Value.(*cached).d, true //nolint:errcheck // the list holds only *cached
}

// put stores d as of transaction txid unless a newer one is there. d must
// not be changed afterwards.
func (c *deviceCache) put(serial string, txid int, d *Device) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[serial]; ok {
		e := el.Value.(*cached) //nolint:errcheck // the list holds only *cached
		if e.txid > txid {
			return
		}
		e.txid, e.d = txid, d
		c.lru.MoveToFront(el)
		return
	}
	c.m[serial] = c.lru.PushFront(&cached{serial: serial, txid: txid, d: d})
	for c.lru.Len() > c.max {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.m, last.Value.(*cached).serial) //nolint:errcheck // the list holds only *cached
	}
}
