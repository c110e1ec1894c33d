package mirror

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// RemoveLeftovers removes what an earlier run of the mirror left in the
// network namespace at netnsPath (empty: the caller's own) when this run
// mirrors nothing: a killed agent's tc filters keep cloning every packet
// of the pods it mirrored, whatever the new run's configuration says. It
// removes our u32 filters (and a clsact qdisc holding nothing else), the
// TCX links of our program it can see, and every veth carrying
// CaptureAlias; it creates nothing and never touches anything else.
// Looking needs no privilege; removing needs CAP_NET_ADMIN (an error
// wrapping EPERM without it). It returns how many filters, links and
// interfaces it removed.
func RemoveLeftovers(netnsPath string) (int, error) {
	m := &Mirror{cfg: Config{NetnsPath: netnsPath}, ifs: map[int]*mirrored{}}
	var err error
	if netnsPath == "" {
		m.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		ns, nerr := openNetns(netnsPath)
		if nerr != nil {
			return 0, nerr
		}
		m.h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		ns.Close()
	}
	if err != nil {
		return 0, fmt.Errorf("netlink handle in netns %q: %w", netnsPath, err)
	}
	defer m.h.Close()
	if m.metrics, err = newMetrics(nil, func(int) float64 { return 0 }); err != nil {
		return 0, err
	}
	// The mechanism stays unset: scan adopts nothing, every filter of
	// ours is stale.
	removed, scanErr := m.scan(nil)
	errs := []error{scanErr}
	links, err := m.h.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list interfaces: %w", err))
	}
	deleted := map[int]bool{}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.Alias != CaptureAlias || deleted[a.Index] {
			continue
		}
		// Deleting one end of a veth deletes both.
		if err := m.h.LinkDel(l); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("delete capture veth %s: %w", a.Name, err))
			continue
		}
		deleted[a.Index], deleted[a.ParentIndex] = true, true
		klog.InfoS("Deleted a capture veth pair left by a previous run", "name", a.Name, "netns", netnsPath)
		removed++
	}
	return removed, errors.Join(errs...)
}
