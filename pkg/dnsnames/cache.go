package dnsnames

import (
	"container/heap"
	"sync"
	"time"
)

// cacheKey names an address as resolved by one client IP (ns empty) or by
// any pod of a Kubernetes namespace (client zero).
type cacheKey struct {
	client [16]byte
	ns     string
	addr   [16]byte
}

type cacheEntry struct {
	key     cacheKey
	name    string
	ns      string // a client entry: the client's namespace when it asked, or ""
	expires int64  // Unix ns
	idx     int    // position in the heap
}

// cache maps addresses to names with a bounded number of entries. A
// min-heap on expiry both finds what expired and picks the entry to evict
// when the cache is full: the one closest to expiring, i.e. the oldest
// answer in terms of its remaining lifetime (with equal TTLs, the one
// inserted first). Enrich's lookups share the lock with Run's inserts;
// every write holds it for one map update and one O(log n) heap step.
type cache struct {
	max         int
	floor, ceil time.Duration

	mu sync.RWMutex
	m  map[cacheKey]*cacheEntry
	h  entryHeap
}

func newCache(max int, floor, ceil time.Duration) *cache {
	return &cache{max: max, floor: floor, ceil: ceil, m: make(map[cacheKey]*cacheEntry)}
}

// lifetime is how long an answer with ttl seconds is kept: at least the
// floor, because clients cache answers and connect later than the TTL
// would allow (and a TTL of 0 or a few seconds is common behind load
// balancers), and at most the ceiling, because the address may go to
// someone else.
func (c *cache) lifetime(ttl uint32) time.Duration {
	d := time.Duration(ttl) * time.Second
	if d < c.floor {
		d = c.floor
	}
	if d > c.ceil {
		d = c.ceil
	}
	return d
}

// put stores name for k until now plus the answer's lifetime; a newer
// answer replaces the older one's name and expiry. It reports how many
// live entries it evicted to make room (0 or 1).
func (c *cache) put(k cacheKey, ns, name string, ttl uint32, now int64) (evicted int) {
	exp := now + int64(c.lifetime(ttl))
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		e.name, e.ns, e.expires = name, ns, exp
		heap.Fix(&c.h, e.idx)
		return 0
	}
	if len(c.m) >= c.max {
		old := heap.Pop(&c.h).(*cacheEntry)
		delete(c.m, old.key)
		if old.expires > now {
			evicted = 1
		}
	}
	e := &cacheEntry{key: k, name: name, ns: ns, expires: exp}
	heap.Push(&c.h, e)
	c.m[k] = e
	return evicted
}

// get returns the live entry for k.
func (c *cache) get(k cacheKey, now int64) (name, ns string, ok bool) {
	c.mu.RLock()
	e, found := c.m[k]
	if found && e.expires > now {
		name, ns, ok = e.name, e.ns, true
	}
	c.mu.RUnlock()
	return name, ns, ok
}

// expire removes up to limit entries that expired by now and returns how
// many it removed; the limit keeps each hold of the lock short.
func (c *cache) expire(now int64, limit int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for n < limit && len(c.h) > 0 && c.h[0].expires <= now {
		e := heap.Pop(&c.h).(*cacheEntry)
		delete(c.m, e.key)
		n++
	}
	return n
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

type entryHeap []*cacheEntry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *entryHeap) Push(x any) {
	e := x.(*cacheEntry)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}
