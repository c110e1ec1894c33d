package mirror

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/flowlens/flowlens/pkg/netns"
)

var tcxHooks = [2]ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress}

// attachTCXProgram attaches the program at the head of one hook: before
// a CNI program that could redirect or end the hook, so the pod's traffic
// is copied whatever they do (the program itself always says "next").
func (m *Mirror) attachTCXProgram(ifindex int, typ ebpf.AttachType) (link.Link, error) {
	var l link.Link
	// The kernel resolves the ifindex in the caller's namespace.
	err := netns.Do(m.cfg.NetnsPath, func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: m.objs.FlMirror, Attach: typ, Anchor: link.Head()})
		return err
	})
	return l, err
}

func (m *Mirror) installTCX(mi *mirrored) error {
	if m.objs == nil {
		return errors.New("mirror program not loaded")
	}
	for _, typ := range tcxHooks {
		l, err := m.attachTCX(mi.ifindex, typ)
		if err != nil {
			for _, l := range mi.links {
				l.Close()
			}
			mi.links = nil
			return fmt.Errorf("attach tcx %s: %w", typ, err)
		}
		mi.links = append(mi.links, l)
	}
	return nil
}

// ourLinkIDs is the set of TCX links this instance holds.
func (m *Mirror) ourLinkIDs() map[link.ID]bool {
	ids := map[link.ID]bool{}
	for _, mi := range m.ifs {
		for _, l := range mi.links {
			if info, err := l.Info(); err == nil {
				ids[info.ID] = true
			}
		}
	}
	return ids
}

// detachForeignTCX detaches the TCX links on ifindex that run a program
// named ProgramName and that this instance does not hold: leftovers of an
// earlier instance in this process, or of a run that pinned them. It
// returns how many it detached. A kernel without TCX has none.
func (m *Mirror) detachStaleTCX(ifindex int, keep map[link.ID]bool) (int, error) {
	n := 0
	var errs []error
	err := netns.Do(m.cfg.NetnsPath, func() error {
		for _, typ := range tcxHooks {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: typ})
			if err != nil {
				// No TCX here (or the interface went): nothing of ours.
				return nil
			}
			for _, p := range res.Programs {
				id, ok := p.LinkID()
				if !ok || keep[id] {
					continue
				}
				prog, err := ebpf.NewProgramFromID(p.ID)
				if err != nil {
					continue // detached meanwhile
				}
				info, err := prog.Info()
				prog.Close()
				if err != nil || info.Name != ProgramName {
					continue
				}
				l, err := link.NewFromID(id)
				if err != nil {
					continue
				}
				if err := l.Detach(); err != nil {
					errs = append(errs, fmt.Errorf("detach stale tcx link %d: %w", id, err))
				} else {
					n++
				}
				l.Close()
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}
