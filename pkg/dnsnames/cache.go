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
	idx     int    // position in the cache's expiry heap
	gidx    int    // position in its group's heap
	group   *group
}

// owner is the namespace the entry counts against: the one of the pod
// that asked ("" when not known).
func (e *cacheEntry) owner() string {
	if e.key.ns != "" {
		return e.key.ns
	}
	return e.ns
}

// group is the entries one namespace's pods asked for.
type group struct {
	ns   string
	h    groupHeap
	hidx int // position in the cache's group heap
}

// cache maps addresses to names with a bounded number of entries, shared
// fairly between namespaces. When the cache is full, an expired entry
// makes room if there is one; otherwise the namespace holding the most
// entries gives up its entry closest to expiry (the oldest answer in
// terms of its remaining lifetime). So a namespace never loses a live
// answer to another that holds fewer entries than it: with k namespaces
// holding answers, each keeps at least max/k of its own, however many
// names the others resolve. Enrich's lookups share the lock with Run's
// inserts; every write holds it for one map update and a few O(log n)
// heap steps.
type cache struct {
	max         int
	floor, ceil time.Duration

	mu     sync.RWMutex
	m      map[cacheKey]*cacheEntry
	h      expiryHeap // every entry, by expiry
	groups map[string]*group
	gh     groupsBySize
}

func newCache(max int, floor, ceil time.Duration) *cache {
	return &cache{max: max, floor: floor, ceil: ceil, m: make(map[cacheKey]*cacheEntry), groups: make(map[string]*group)}
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
		e.name, e.expires = name, exp
		heap.Fix(&c.h, e.idx)
		if e.ns != ns {
			// The asker's namespace became known (or changed): the
			// entry now counts against that one.
			c.leave(e)
			e.ns = ns
			c.join(e)
		} else {
			heap.Fix(&e.group.h, e.gidx)
		}
		return 0
	}
	if len(c.m) >= c.max {
		var victim *cacheEntry
		if c.h[0].expires <= now {
			victim = c.h[0]
		} else {
			victim = c.gh[0].h[0]
			evicted = 1
		}
		c.remove(victim)
	}
	e := &cacheEntry{key: k, name: name, ns: ns, expires: exp}
	heap.Push(&c.h, e)
	c.m[k] = e
	c.join(e)
	return evicted
}

// join adds e to its owner's group.
func (c *cache) join(e *cacheEntry) {
	g, ok := c.groups[e.owner()]
	if !ok {
		g = &group{ns: e.owner()}
		c.groups[g.ns] = g
		heap.Push(&c.gh, g)
	}
	e.group = g
	heap.Push(&g.h, e)
	heap.Fix(&c.gh, g.hidx)
}

// leave removes e from its group, and the group when it is empty.
func (c *cache) leave(e *cacheEntry) {
	g := e.group
	heap.Remove(&g.h, e.gidx)
	e.group = nil
	if len(g.h) == 0 {
		heap.Remove(&c.gh, g.hidx)
		delete(c.groups, g.ns)
		return
	}
	heap.Fix(&c.gh, g.hidx)
}

func (c *cache) remove(e *cacheEntry) {
	heap.Remove(&c.h, e.idx)
	c.leave(e)
	delete(c.m, e.key)
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
		c.remove(c.h[0])
		n++
	}
	return n
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// entriesOf is how many entries count against namespace ns.
func (c *cache) entriesOf(ns string) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if g, ok := c.groups[ns]; ok {
		return len(g.h)
	}
	return 0
}

// expiryHeap orders entries by expiry through cacheEntry.idx.
type expiryHeap []*cacheEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*cacheEntry)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// groupHeap orders one group's entries by expiry through cacheEntry.gidx.
type groupHeap []*cacheEntry

func (h groupHeap) Len() int           { return len(h) }
func (h groupHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h groupHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].gidx = i
	h[j].gidx = j
}
func (h *groupHeap) Push(x any) {
	e := x.(*cacheEntry)
	e.gidx = len(*h)
	*h = append(*h, e)
}
func (h *groupHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// groupsBySize puts the group holding the most entries first.
type groupsBySize []*group

func (h groupsBySize) Len() int           { return len(h) }
func (h groupsBySize) Less(i, j int) bool { return len(h[i].h) > len(h[j].h) }
func (h groupsBySize) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx = i
	h[j].hidx = j
}
func (h *groupsBySize) Push(x any) {
	g := x.(*group)
	g.hidx = len(*h)
	*h = append(*h, g)
}
func (h *groupsBySize) Pop() any {
	old := *h
	g := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return g
}
