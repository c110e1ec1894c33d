//go:build integration

package podlinks

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// cniBridge is Debian's containernetworking-plugins bridge plugin
// (hack/install-deps.sh node), the CNI a real node here runs.
const cniBridge = "/usr/lib/cni/bridge"

// A pod wired by the real bridge CNI plugin is reported once and stays:
// the plugin makes the veth with its peer already in the pod's namespace
// (its first message names no peer), then makes it a bridge port (whose
// messages carry no link kind). Neither may read as "not a pod's": the
// agent would detach its programs, or never attach them.
func TestBridgeCNIPodIsReportedOnce(t *testing.T) {
	if _, err := os.Stat(cniBridge); err != nil {
		t.Fatalf("the bridge CNI plugin is needed (hack/install-deps.sh node): %v", err)
	}
	host, pod := fmt.Sprintf("plbr-host-%d", os.Getpid()), fmt.Sprintf("plbr-pod-%d", os.Getpid())
	for _, ns := range []string{host, pod} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v %s", ns, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	var mu sync.Mutex
	var events []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	synced := make(chan struct{})
	go func() {
		done <- Watch(ctx, "/run/netns/"+host, nil, func(ev Event) {
			if ev.Kind == Synced {
				close(synced)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			events = append(events, ev.Kind.String()+" "+ev.Name)
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	}()
	<-synced

	conf := `{"cniVersion":"0.4.0","name":"plbr","type":"bridge","bridge":"plbr0","isGateway":true,` +
		`"ipam":{"type":"host-local","subnet":"10.250.77.0/24","dataDir":"` + t.TempDir() + `"}}`
	cmd := exec.Command("ip", "netns", "exec", host, cniBridge)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID=plbr1", "CNI_NETNS=/run/netns/"+pod,
		"CNI_IFNAME=eth0", "CNI_PATH=/usr/lib/cni")
	cmd.Stdin = strings.NewReader(conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CNI ADD: %v\n%s", err, out)
	}
	out, err := exec.Command("ip", "-n", host, "-o", "link", "show", "master", "plbr0").Output()
	if err != nil || len(strings.Fields(string(out))) < 2 {
		t.Fatalf("no bridge port after CNI ADD: %v %s", err, out)
	}
	port := strings.SplitN(strings.Fields(string(out))[1], "@", 2)[0]
	// Let the plugin's and the bridge's messages all arrive.
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0] != Added.String()+" "+port {
		t.Errorf("events %q, want the pod's veth %s added once and never removed", events, port)
	}
}
