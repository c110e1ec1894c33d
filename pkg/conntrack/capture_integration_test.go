//go:build integration

package conntrack

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowlens/flowlens/pkg/conntrack/conntracktest"
	"github.com/flowlens/flowlens/pkg/flow"
	"github.com/flowlens/flowlens/pkg/netns"
)

var captureFixtures = flag.Bool("capture-fixtures", false, "rewrite testdata/*.bin from a real kernel")

// TestCaptureFixtures records a dump and the NEW/DESTROY events of
// fixtureEntries from this kernel. Without -capture-fixtures it checks that
// the kernel still produces messages the committed fixtures' decoder
// accepts, so it always asserts something.
func TestCaptureFixtures(t *testing.T) {
	name, path := conntracktest.NetNS(t, "fix")
	for _, s := range accountingSysctls {
		if err := netns.WriteSysctl(path, s, "1"); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := openNL(path, groupNew|groupDestroy, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.close()
	if err := conntracktest.Insert(path, fixtureEntries...); err != nil {
		t.Fatal(err)
	}

	dump, err := openNL(path, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer dump.close()
	if err := dump.send(dumpRequest(Config{}, 1)); err != nil {
		t.Fatal(err)
	}
	var dumpBytes []byte
	buf := make([]byte, recvBufSize)
	for done := false; !done; {
		n, err := dump.recv(buf)
		if err != nil {
			t.Fatal(err)
		}
		dumpBytes = append(dumpBytes, buf[:n]...)
		for b := buf[:n]; ; {
			m, rest, ok, err := nextMsg(b)
			if err != nil || !ok {
				break
			}
			b = rest
			done = done || m.typ == nlmsgDone
		}
	}

	time.Sleep(10 * time.Millisecond) // the timestamps must differ from start
	if out, err := exec.Command("ip", "netns", "exec", name, "conntrack", "-F").CombinedOutput(); err != nil {
		t.Fatalf("conntrack -F (apt-get install conntrack): %v: %s", err, out)
	}
	var evBytes []byte
	ev.setDeadline(time.Now().Add(2 * time.Second))
	for msgs := 0; msgs < 2*len(fixtureEntries); {
		n, err := ev.recv(buf)
		if err != nil {
			t.Fatalf("after %d event messages: %v", msgs, err)
		}
		evBytes = append(evBytes, buf[:n]...)
		for b := buf[:n]; ; {
			_, rest, ok, err := nextMsg(b)
			if err != nil || !ok {
				break
			}
			b = rest
			msgs++
		}
	}
	if *captureFixtures {
		for f, b := range map[string][]byte{"dump.bin": dumpBytes, "events.bin": evBytes} {
			if err := os.WriteFile(filepath.Join("testdata", f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("wrote testdata/dump.bin (%d bytes), testdata/events.bin (%d bytes)", len(dumpBytes), len(evBytes))
	}
	s := &Source{m: mustMetrics(t), filter: newFilter(Config{})}
	var st decodeStats
	got := 0
	s.handleEvents(evBytes, new(flow.Conn), &st, func(Event) { got++ })
	if st.errors != 0 || got != 2*len(fixtureEntries) {
		t.Errorf("live events: %d delivered, %d decode errors (%v)", got, st.errors, st.firstErr)
	}
}
