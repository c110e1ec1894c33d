// Package inventory gives hosts without Kubernetes (VMs, bare metal, the
// demo) the same enrichment and L7 policy as pkg/k8smeta, from a YAML file
// (see File) that is watched and reloaded when it changes. Entries play the
// part of pods, groups of namespaces, nodes of nodes, services of Services;
// the lookup semantics are those of package ipindex.
//
// A file that fails validation at start is an error naming the entry and
// field. On reload, an invalid file is logged and counted
// (flowlens_inventory_reloads_total{result="error"}) and the previous good
// one stays in force.
package inventory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/ipindex"
)

// Config configures an Inventory.
type Config struct {
	// Path is the inventory file.
	Path string
	// NodeName is the host the agent runs on: the default node of entries,
	// and what flow types are relative to.
	NodeName string
	// GracePeriod: see ipindex.Config; zero means ipindex.DefaultGracePeriod.
	GracePeriod time.Duration
	// Debounce is how long to wait after a change before reloading, so an
	// editor's write-rename-chmod sequence is read once. Zero means 100ms.
	Debounce time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Inventory is the file-backed enricher and L7 policy.
type Inventory struct {
	cfg Config
	idx *ipindex.Index

	mu      sync.Mutex // serialises reloads; guards current
	current *parsed

	reloads *prometheus.CounterVec
	entries prometheus.Gauge
}

// New loads the file; an invalid file is an error naming the entry and field.
//
// Its metrics are registered on reg (nil: counted, not registered).
func New(cfg Config, reg prometheus.Registerer) (*Inventory, error) {
	if cfg.Path == "" {
		return nil, errors.New("inventory: Config.Path is empty")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("inventory: Config.NodeName is empty")
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	idx, err := ipindex.New(ipindex.Config{LocalNode: cfg.NodeName, GracePeriod: cfg.GracePeriod, Now: cfg.Now})
	if err != nil {
		return nil, fmt.Errorf("inventory: Config.GracePeriod: %w", err)
	}
	inv := &Inventory{
		cfg: cfg,
		idx: idx,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flowlens_inventory_reloads_total",
			Help: "Inventory file loads by result (ok, error); on error the previous file stays in force.",
		}, []string{"result"}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flowlens_inventory_entries",
			Help: "Workload entries in the inventory in force.",
		}),
	}
	for _, c := range []prometheus.Collector{inv.reloads, inv.entries} {
		if reg == nil {
			break
		}
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("inventory: register metrics: %w", err)
		}
	}
	p, err := load(cfg.Path, cfg.NodeName)
	if err != nil {
		inv.reloads.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("inventory: %w", err)
	}
	inv.apply(p)
	return inv, nil
}

// Reload reads the file again; an invalid file leaves the current one in
// force and returns the error. Run calls it on changes.
func (inv *Inventory) Reload() error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	p, err := load(inv.cfg.Path, inv.cfg.NodeName)
	if err != nil {
		inv.reloads.WithLabelValues("error").Inc()
		klog.ErrorS(err, "Inventory reload failed; keeping the previous inventory", "path", inv.cfg.Path)
		return fmt.Errorf("inventory: %w", err)
	}
	inv.applyLocked(p)
	klog.InfoS("Inventory reloaded", "path", inv.cfg.Path, "entries", len(p.entries))
	return nil
}

func (inv *Inventory) apply(p *parsed) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.applyLocked(p)
}

// applyLocked moves the index from the current file to p: entries present in
// both keep their IP history; removed ones are released now.
func (inv *Inventory) applyLocked(p *parsed) {
	old := inv.current
	if old == nil {
		old = &parsed{}
	}
	for key := range old.entries {
		if _, ok := p.entries[key]; !ok {
			inv.idx.DeletePod(key, time.Time{})
		}
	}
	for key, e := range p.entries {
		if err := inv.idx.SetPod(key, e.ips, time.Time{}, e.pod); err != nil {
			klog.ErrorS(err, "Indexing inventory entry", "entry", key)
		}
	}
	for name := range old.nodes {
		if _, ok := p.nodes[name]; !ok {
			inv.idx.DeleteHost(name)
		}
	}
	for name, ips := range p.nodes {
		inv.idx.SetHost(name, name, ips)
	}
	for key := range old.services {
		if _, ok := p.services[key]; !ok {
			inv.idx.DeleteService(key)
		}
	}
	for key, s := range p.services {
		inv.idx.SetService(key, s.ips, s.ports)
	}
	for name := range old.groups {
		if _, ok := p.groups[name]; !ok {
			inv.idx.SetNamespaceL7(name, ipindex.L7Unset)
		}
	}
	for name, m := range p.groups {
		inv.idx.SetNamespaceL7(name, m)
	}
	inv.current = p
	inv.reloads.WithLabelValues("ok").Inc()
	inv.entries.Set(float64(len(p.entries)))
}

// Run watches the file until ctx is done and reloads it after changes. It
// watches the directory, not the file: editors and ConfigMap volumes
// replace the file by renaming another over it, which a watch on the old
// inode would never report.
func (inv *Inventory) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("inventory: create watcher: %w", err)
	}
	defer w.Close()
	dir := filepath.Dir(inv.cfg.Path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("inventory: watch %s: %w", dir, err)
	}
	base := filepath.Base(inv.cfg.Path)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("inventory: watcher closed")
			}
			// Kubernetes ConfigMap volumes swap a "..data" symlink; any
			// change to it or to our file name may change what Path reads.
			if name := filepath.Base(ev.Name); name == base || strings.HasPrefix(name, "..") {
				timer.Reset(inv.cfg.Debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("inventory: watcher closed")
			}
			klog.ErrorS(err, "Inventory watcher error", "path", inv.cfg.Path)
		case <-timer.C:
			_ = inv.Reload() // logged and counted; the previous file stays
		}
	}
}

// Enrich fills r's context from the inventory (see ipindex.Index.Enrich).
func (inv *Inventory) Enrich(r *flow.Record) { inv.idx.Enrich(r) }

// L7Want says which ends of c opted into L7 export.
func (inv *Inventory) L7Want(c *flow.Conn) flow.L7Want { return inv.idx.L7Want(c) }

func labelsJSON(l map[string]string) string {
	if len(l) == 0 {
		return ""
	}
	b, err := json.Marshal(l)
	if err != nil {
		return ""
	}
	return string(b)
}

func protoNumber(s string) (uint8, error) {
	switch strings.ToUpper(s) {
	case "", "TCP":
		return flow.ProtoTCP, nil
	case "UDP":
		return flow.ProtoUDP, nil
	case "SCTP":
		return flow.ProtoSCTP, nil
	}
	return 0, fmt.Errorf("%q: want TCP, UDP or SCTP", s)
}

// NamespaceOf returns the group of the entry that has addr now, or "".
// It fits pkg/l7's Config.NamespaceOf.
func (inv *Inventory) NamespaceOf(addr netip.Addr) string { return inv.idx.NamespaceOf(addr) }
