package dnsnames

import (
	"testing"
	"time"
)

func TestCacheTTLFloorAndCeiling(t *testing.T) {
	const sec = int64(time.Second)
	c := newCache(10, 30*time.Second, 5*time.Minute)
	k := func(b byte) cacheKey { return cacheKey{ns: "a", addr: [16]byte{15: b}} }
	now := int64(1_000_000) * sec
	c.put(k(1), "", "floor", 2, now)    // TTL 2 s -> kept 30 s
	c.put(k(2), "", "ttl", 100, now)    // honoured
	c.put(k(3), "", "ceil", 86400, now) // TTL 1 day -> kept 5 min
	c.put(k(4), "", "zero", 0, now)     // TTL 0 -> the floor
	for _, tc := range []struct {
		k        cacheKey
		lastLive int64
	}{{k(1), 30 * sec}, {k(2), 100 * sec}, {k(3), 300 * sec}, {k(4), 30 * sec}} {
		if _, _, ok := c.get(tc.k, now+tc.lastLive-1); !ok {
			t.Errorf("%v: gone before %ds", tc.k.addr[15], tc.lastLive/sec)
		}
		if name, _, ok := c.get(tc.k, now+tc.lastLive); ok {
			t.Errorf("%v: %q still live at %ds", tc.k.addr[15], name, tc.lastLive/sec)
		}
	}
	if n := c.expire(now+31*sec, 100); n != 2 {
		t.Errorf("expired %d at 31s, want 2", n)
	}
	if c.len() != 2 {
		t.Errorf("%d entries left, want 2", c.len())
	}
}

// TestCacheEviction: a full cache evicts the entry closest to expiry and
// says so; an already expired one makes room without counting as an
// eviction.
func TestCacheEviction(t *testing.T) {
	c := newCache(3, time.Second, time.Hour)
	k := func(b byte) cacheKey { return cacheKey{client: [16]byte{0: 1}, addr: [16]byte{15: b}} }
	now := int64(1e18)
	c.put(k(1), "", "one", 100, now)
	c.put(k(2), "", "two", 50, now) // closest to expiry
	c.put(k(3), "", "three", 200, now)
	if ev := c.put(k(4), "", "four", 100, now+1); ev != 1 {
		t.Errorf("evicted %d, want 1", ev)
	}
	if _, _, ok := c.get(k(2), now+2); ok {
		t.Error("the entry closest to expiry was not the one evicted")
	}
	for _, b := range []byte{1, 3, 4} {
		if _, _, ok := c.get(k(b), now+2); !ok {
			t.Errorf("entry %d evicted", b)
		}
	}
	// Refreshing an entry moves its expiry and replaces its name.
	c.put(k(1), "ns-x", "uno", 1000, now+2)
	if name, ns, ok := c.get(k(1), now+int64(500*time.Second)); !ok || name != "uno" || ns != "ns-x" {
		t.Errorf("refreshed entry: %q %q %v", name, ns, ok)
	}
	if c.len() != 3 {
		t.Errorf("%d entries, want 3 (a refresh adds none)", c.len())
	}
	// Expired entries make room silently.
	later := now + int64(300*time.Second)
	if ev := c.put(k(5), "", "five", 100, later); ev != 0 {
		t.Errorf("evicting an expired entry counted %d evictions", ev)
	}
}

func TestCacheExpireLimit(t *testing.T) {
	c := newCache(100, time.Second, time.Second)
	for i := 0; i < 10; i++ {
		c.put(cacheKey{addr: [16]byte{15: byte(i)}}, "", "n", 1, 0)
	}
	if n := c.expire(int64(2*time.Second), 4); n != 4 {
		t.Errorf("expired %d, want the limit 4", n)
	}
	if c.len() != 6 {
		t.Errorf("%d left", c.len())
	}
}
