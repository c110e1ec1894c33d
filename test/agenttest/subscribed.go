package agenttest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/flowlens/flowlens/pkg/netns"
)

// eventWatch is the part of an agent configuration that says whether, and in
// which network namespace, the agent listens to conntrack events.
type eventWatch struct {
	Conntrack struct {
		NetNS  string `json:"netns"`
		Events *bool  `json:"events"`
	} `json:"conntrack"`
}

// parseEventWatch reads cfg's conntrack section: the netns whose events the
// agent subscribes to ("" is the agent's own) and whether it subscribes at
// all (the agent's default is yes).
func parseEventWatch(cfg string) (netnsPath string, events bool, err error) {
	var w eventWatch
	if err := yaml.Unmarshal([]byte(cfg), &w); err != nil {
		return "", false, fmt.Errorf("parse agent config: %w", err)
	}
	return w.Conntrack.NetNS, w.Conntrack.Events == nil || *w.Conntrack.Events, nil
}

// nfnetlink is NETLINK_NETFILTER, the protocol column of /proc/net/netlink.
const nfnetlink = 12

// ctGroupNew is NFNLGRP_CONNTRACK_NEW as a bind(2) group bit: the group the
// agent needs to see a connection's first packet.
const ctGroupNew = 1 << 0

// subscribedToConntrack reports whether process pid holds a netfilter
// netlink socket in the network namespace at netnsPath that is bound to
// conntrack's NEW events. Such a socket queues every event from then on,
// so traffic started afterwards cannot be missed by the agent's listener,
// which a fixed sleep after start-up could only make likely.
func subscribedToConntrack(pid int, netnsPath string) (bool, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return false, err
	}
	if len(inodes) == 0 {
		return false, nil
	}
	var table []byte
	// /proc/thread-self/net is the calling thread's namespace, the one
	// netns.Do entered; /proc/net would be the process's main thread's.
	err = netns.Do(netnsPath, func() error {
		var err error
		table, err = os.ReadFile("/proc/thread-self/net/netlink")
		return err
	})
	if err != nil {
		return false, fmt.Errorf("read netlink sockets of netns %q: %w", netnsPath, err)
	}
	return netlinkSubscribed(table, inodes)
}

// netlinkSubscribed scans a /proc/net/netlink table (columns sk Eth Pid
// Groups Rmem Wmem Dump Locks Drops Inode) for a netfilter socket with one
// of inodes in conntrack's NEW group.
func netlinkSubscribed(table []byte, inodes map[uint64]bool) (bool, error) {
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			return false, fmt.Errorf("netlink table line %q: want 10 columns", sc.Text())
		}
		proto, err := strconv.Atoi(f[1])
		if err != nil {
			return false, fmt.Errorf("netlink table line %q: protocol: %w", sc.Text(), err)
		}
		groups, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil {
			return false, fmt.Errorf("netlink table line %q: groups: %w", sc.Text(), err)
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return false, fmt.Errorf("netlink table line %q: inode: %w", sc.Text(), err)
		}
		if proto == nfnetlink && groups&ctGroupNew != 0 && inodes[inode] {
			return true, nil
		}
	}
	return false, sc.Err()
}

// socketInodes returns the inodes of process pid's open sockets.
func socketInodes(pid int) (map[uint64]bool, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list descriptors of pid %d: %w", pid, err)
	}
	inodes := make(map[uint64]bool)
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed since the listing
		}
		if s, ok := strings.CutPrefix(target, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				inodes[n] = true
			}
		}
	}
	return inodes, nil
}
