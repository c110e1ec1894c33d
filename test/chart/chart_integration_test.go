//go:build integration

package chart

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/flowlens/flowlens/pkg/agentconfig"
	"github.com/flowlens/flowlens/pkg/aggregatorconfig"
)

// valueSet is one way of installing the chart and what it must produce.
type valueSet struct {
	name      string
	args      []string
	l7        bool
	tls       bool
	mutual    bool
	ch        bool
	collector string // "" = the aggregator Service's address
}

func valueSets(t *testing.T) []valueSet {
	full := filepath.Join(repoRoot(t), "build/charts/flowlens/ci/full-values.yaml")
	return []valueSet{
		{name: "defaults"},
		{name: "L7, ClickHouse and mutual TLS (ci/full-values.yaml)", args: []string{"-f", full}, l7: true, tls: true, mutual: true, ch: true},
		{name: "TLS without client certificates", args: []string{"--set", "tls.enabled=true"}, tls: true},
		{name: "L7 only", args: []string{"--set", "l7.enabled=true"}, l7: true},
		{name: "an aggregator elsewhere", args: []string{"--set", "aggregator.enabled=false", "--set", "aggregator.address=192.0.2.10:4739"}, collector: "192.0.2.10:4739"},
	}
}

// The capabilities each container may have, all others dropped: the
// agent's are explained in docs/security.md ("What the agent needs from
// the kernel").
var wantCaps = map[string][]corev1.Capability{
	"agent":             {"NET_ADMIN", "BPF", "PERFMON"},
	"conntrack-sysctls": {"NET_ADMIN"},
	"suricata":          {"NET_RAW"},
	"aggregator":        nil,
	"clickhouse":        nil,
}

func TestChartSecurity(t *testing.T) {
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			r := render(t, vs.args...)
			pods := r.pods()
			if len(pods) == 0 {
				t.Fatal("no workloads rendered")
			}
			for workload, spec := range pods {
				if spec.HostPID || spec.HostIPC {
					t.Errorf("%s: hostPID/hostIPC set", workload)
				}
				if spec.HostNetwork != (workload == "flowlens-agent") {
					t.Errorf("%s: hostNetwork %v; only the agent uses the node's network", workload, spec.HostNetwork)
				}
				for _, v := range spec.Volumes {
					if v.HostPath != nil && (workload != "flowlens-agent" || v.HostPath.Path != "/proc/sys/net/netfilter") {
						t.Errorf("%s: hostPath volume %s (%s)", workload, v.Name, v.HostPath.Path)
					}
				}
				for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
					checkContainerSecurity(t, workload, spec, c)
				}
			}
			agent := pods["flowlens-agent"]
			if agent == nil {
				t.Fatal("no agent DaemonSet")
			}
			if got := slices.ContainsFunc(agent.Containers, func(c corev1.Container) bool { return c.Name == "suricata" }); got != vs.l7 {
				t.Errorf("suricata sidecar present: %v, want %v", got, vs.l7)
			}
			if _, got := r.statefulSets["flowlens-clickhouse"]; got != vs.ch {
				t.Errorf("ClickHouse StatefulSet present: %v, want %v", got, vs.ch)
			}
		})
	}
}

func checkContainerSecurity(t *testing.T, workload string, spec *corev1.PodSpec, c corev1.Container) {
	t.Helper()
	want, known := wantCaps[c.Name]
	if !known {
		t.Errorf("%s/%s: a container the test does not know; add its capabilities to wantCaps", workload, c.Name)
		return
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s/%s: no securityContext", workload, c.Name)
		return
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s/%s: privileged", workload, c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s/%s: allowPrivilegeEscalation not false", workload, c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s/%s: readOnlyRootFilesystem not true", workload, c.Name)
	}
	if sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s/%s: capabilities do not drop exactly [ALL]: %+v", workload, c.Name, sc.Capabilities)
	} else if !reflect.DeepEqual(sc.Capabilities.Add, want) {
		t.Errorf("%s/%s: capabilities add %v, want %v", workload, c.Name, sc.Capabilities.Add, want)
	}
	// Only the init container writes through the host's netfilter sysctls.
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && c.Name != "conntrack-sysctls" {
				t.Errorf("%s/%s mounts hostPath %s", workload, c.Name, v.HostPath.Path)
			}
		}
	}
}

func TestChartRBACIsReadOnlyAndMatchesBuildRBAC(t *testing.T) {
	var shipped []rbacv1.PolicyRule
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "build/rbac/agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var role rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &role); err == nil && role.Kind == "ClusterRole" {
			shipped = role.Rules
		}
	}
	if len(shipped) == 0 {
		t.Fatal("build/rbac/agent.yaml has no ClusterRole rules")
	}
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			r := render(t, vs.args...)
			if len(r.roles) != 0 {
				t.Errorf("namespaced Roles rendered: %d", len(r.roles))
			}
			if len(r.clusterRoles) != 1 {
				t.Fatalf("%d ClusterRoles, want the agent's only", len(r.clusterRoles))
			}
			for _, rule := range r.clusterRoles[0].Rules {
				for _, v := range rule.Verbs {
					if v != "get" && v != "list" && v != "watch" {
						t.Errorf("rule %+v: verb %q is not read-only", rule, v)
					}
				}
				if slices.Contains(rule.Resources, "*") || slices.Contains(rule.APIGroups, "*") || slices.Contains(rule.Resources, "secrets") {
					t.Errorf("rule %+v reaches too far", rule)
				}
			}
			if !reflect.DeepEqual(r.clusterRoles[0].Rules, shipped) {
				t.Errorf("chart's rules differ from build/rbac/agent.yaml:\n chart: %+v\n build: %+v", r.clusterRoles[0].Rules, shipped)
			}
		})
	}
}

func TestChartConfigsLoadWithTheRealParsers(t *testing.T) {
	agentFlags := flagsOf(t, "cmd/flowlens-agent")
	aggFlags := flagsOf(t, "cmd/flowlens-aggregator")
	fields := map[string]string{"spec.nodeName": "node-1", "status.hostIP": "192.0.2.1", "metadata.name": "pod-1"}
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			r := render(t, vs.args...)
			spec := r.pods()["flowlens-agent"]
			c := containerNamed(t, spec, "agent")
			args := parseArgs(t, expand(t, r, c, fields), agentFlags)
			dir := t.TempDir()
			path := materialise(t, spec, c, mountedConfig(t, r, spec, c, args["config"]), dir)
			cfg, err := agentconfig.Load(path)
			if err != nil {
				t.Fatalf("agent config: %v", err)
			}
			// As cmd/flowlens-agent applies its flags.
			for flag, dst := range map[string]*string{"node-name": &cfg.NodeName, "collector": &cfg.Export.Collector, "listen": &cfg.Server.Listen, "netns": &cfg.Conntrack.NetNS, "transport": &cfg.Export.Transport} {
				if v, ok := args[flag]; ok {
					*dst = v
				}
			}
			if err := cfg.Finish(); err != nil {
				t.Fatalf("agent config with the chart's flags: %v", err)
			}
			want := vs.collector
			if want == "" {
				svc := r.services["flowlens-aggregator"]
				want = net.JoinHostPort(svc.Spec.ClusterIP, "4739")
				if svc.Spec.ClusterIP == "" {
					want = "10.96.0.42:4739"
				}
			}
			if host, port, _ := net.SplitHostPort(cfg.Export.Collector); net.JoinHostPort(host, port) != want {
				t.Errorf("agent exports to %q, want %q", cfg.Export.Collector, want)
			}
			if cfg.NodeName != "node-1" || cfg.Server.Listen != "[192.0.2.1]:9560" || !cfg.Kubernetes.Enabled {
				t.Errorf("nodeName %q, server.listen %q, kubernetes.enabled %v", cfg.NodeName, cfg.Server.Listen, cfg.Kubernetes.Enabled)
			}
			if (cfg.Export.Transport == "tls") != vs.tls || (cfg.Export.TLS.CertFile != "") != vs.mutual {
				t.Errorf("transport %q, client certificate %q; want tls %v, mutual %v", cfg.Export.Transport, cfg.Export.TLS.CertFile, vs.tls, vs.mutual)
			}
			if vs.tls && cfg.Export.TLS.ServerName != "flowlens-aggregator.flowlens.svc" {
				t.Errorf("export.tls.serverName %q", cfg.Export.TLS.ServerName)
			}
			if (cfg.L7.EVE.Source == "unix_stream") != vs.l7 {
				t.Errorf("l7.eve.source %q with l7 %v", cfg.L7.EVE.Source, vs.l7)
			}
			if vs.l7 {
				checkSuricata(t, r, spec, cfg.L7.EVE.Path)
				checkMirror(t, spec, cfg)
			} else if *cfg.Mirror.Enabled {
				t.Errorf("mirror.enabled with L7 off: the agent would mirror traffic no Suricata reads")
			}
			if vs.collector == "" {
				checkAggregator(t, r, vs, aggFlags, fields)
			} else if len(r.deployments) != 0 {
				t.Errorf("aggregator rendered with aggregator.enabled=false")
			}
		})
	}
}

func checkAggregator(t *testing.T, r *rendering, vs valueSet, known map[string]bool, fields map[string]string) {
	t.Helper()
	dep := r.deployments["flowlens-aggregator"]
	if dep == nil {
		t.Fatal("no aggregator Deployment")
	}
	spec := &dep.Spec.Template.Spec
	c := containerNamed(t, spec, "aggregator")
	args := parseArgs(t, expand(t, r, c, fields), known)
	path := materialise(t, spec, c, mountedConfig(t, r, spec, c, args["config"]), t.TempDir())
	// As cmd/flowlens-aggregator applies its flags.
	cfg, err := aggregatorconfig.LoadWith(path, func(cfg *aggregatorconfig.Config) {
		if v, ok := args["clickhouse-addr"]; ok {
			cfg.Sinks.ClickHouse.Enabled, cfg.Sinks.ClickHouse.Addr = true, v
		}
		if v, ok := args["jsonl"]; ok {
			cfg.Sinks.JSONL.Enabled, cfg.Sinks.JSONL.Path = true, v
		}
		if v, ok := args["metrics-address"]; ok {
			cfg.MetricsAddress = v
		}
	})
	if err != nil {
		t.Fatalf("aggregator config: %v", err)
	}
	scheme := "tcp"
	if vs.tls {
		scheme = "tls"
	}
	if !reflect.DeepEqual(cfg.Listen, []string{scheme + "://0.0.0.0:4739"}) {
		t.Errorf("aggregator listens on %v", cfg.Listen)
	}
	if (cfg.TLS.ClientCAFile != "") != vs.mutual {
		t.Errorf("clientCAFile %q with mutual %v", cfg.TLS.ClientCAFile, vs.mutual)
	}
	if cfg.Sinks.ClickHouse.Enabled != vs.ch || cfg.Sinks.JSONL.Enabled == vs.ch {
		t.Errorf("sinks: clickhouse %v jsonl %v, want clickhouse %v", cfg.Sinks.ClickHouse.Enabled, cfg.Sinks.JSONL.Enabled, vs.ch)
	}
	if vs.ch && cfg.Sinks.ClickHouse.Addr != "[10.96.0.42]:9000" {
		t.Errorf("clickhouse addr %q, want the ClickHouse Service's", cfg.Sinks.ClickHouse.Addr)
	}
	// A read-only root: the WAL needs a volume of its own.
	if cfg.WAL.Enabled && !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return !m.ReadOnly && (cfg.WAL.Dir == m.MountPath || strings.HasPrefix(cfg.WAL.Dir, m.MountPath+"/"))
	}) {
		t.Errorf("wal.dir %s is on the read-only root file system", cfg.WAL.Dir)
	}
	// The Service and the agents' variable go to the container's port.
	for _, p := range r.services["flowlens-aggregator"].Spec.Ports {
		if p.Name == "ipfix" && (p.TargetPort.StrVal != "ipfix" || c.Ports[0].Name != "ipfix" || c.Ports[0].ContainerPort != 4739) {
			t.Errorf("Service port %+v does not reach the container's IPFIX port %+v", p, c.Ports)
		}
	}
}

// checkSuricata: the sidecar captures l7.interface, writes eve-log where
// the agent listens, through a volume both mount, and `suricata -T`
// accepts the configuration.
func checkSuricata(t *testing.T, r *rendering, spec *corev1.PodSpec, evePath string) {
	t.Helper()
	s := containerNamed(t, spec, "suricata")
	a := containerNamed(t, spec, "agent")
	var confPath string
	argv := suricataArgv(s)
	for i, arg := range argv {
		if arg == "-c" && i+1 < len(argv) {
			confPath = argv[i+1]
		}
	}
	conf := mountedConfig(t, r, spec, s, confPath)
	var parsed struct {
		Outputs []map[string]struct {
			Filetype string `json:"filetype"`
			Filename string `json:"filename"`
		} `json:"outputs"`
	}
	body := conf[strings.Index(conf, "---")+3:] // after %YAML 1.1
	if err := yaml.Unmarshal([]byte(body), &parsed); err != nil {
		t.Fatalf("suricata.yaml: %v", err)
	}
	var eve string
	for _, o := range parsed.Outputs {
		if e, ok := o["eve-log"]; ok && e.Filetype == "unix_stream" {
			eve = e.Filename
		}
	}
	if eve != evePath {
		t.Errorf("Suricata's eve-log goes to %q, the agent listens on %q", eve, evePath)
	}
	mountOf := func(c *corev1.Container) string {
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(evePath, m.MountPath+"/") {
				return m.Name
			}
		}
		return ""
	}
	if ma, ms := mountOf(a), mountOf(s); ma == "" || ma != ms {
		t.Errorf("agent (%q) and suricata (%q) do not share the socket's volume", ma, ms)
	}
	suricata, err := exec.LookPath("suricata")
	if err != nil {
		t.Fatalf("suricata not found: run hack/install-deps.sh suricata (%v)", err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "suricata.yaml")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(suricata, "-T", "-c", file, "-S", os.DevNull, "-l", dir, "--af-packet=lo").CombinedOutput()
	if err != nil {
		t.Fatalf("suricata -T rejects the chart's configuration: %v\n%s", err, out)
	}
}

// checkMirror: with L7 the agent mirrors opted-in pods to the veth pair
// whose peer is the interface the Suricata sidecar captures.
func checkMirror(t *testing.T, spec *corev1.PodSpec, cfg agentconfig.Config) {
	t.Helper()
	if !*cfg.Mirror.Enabled {
		t.Error("l7.enabled but the agent's mirror.enabled is false: Suricata would see no traffic")
	}
	s := containerNamed(t, spec, "suricata")
	var iface string
	for _, arg := range suricataArgv(s) {
		if v, ok := strings.CutPrefix(arg, "--af-packet="); ok {
			iface = v
		}
	}
	if iface == "" || iface != cfg.Mirror.PeerInterface {
		t.Errorf("Suricata captures %q, the agent mirrors to the peer %q", iface, cfg.Mirror.PeerInterface)
	}
}

// suricataArgv is Suricata's command line: the container's args when it
// has any (its command then waits for the capture interface first).
func suricataArgv(c *corev1.Container) []string {
	if len(c.Args) > 0 {
		return c.Args
	}
	return c.Command
}

// A value that makes an invalid configuration must fail here, not in a
// crash-looping pod: the parsers name the field.
func TestChartBadValuesAreCaught(t *testing.T) {
	r := render(t, "--set", "agent.config.connections.activeTimeout=-1s", "--set", "aggregator.config.inputQueue=0")
	spec := r.pods()["flowlens-agent"]
	c := containerNamed(t, spec, "agent")
	path := materialise(t, spec, c, mountedConfig(t, r, spec, c, "/etc/flowlens/agent.yaml"), t.TempDir())
	if _, err := agentconfig.Load(path); err == nil || !strings.Contains(err.Error(), "connections.activeTimeout") {
		t.Errorf("agent config with a negative activeTimeout: %v", err)
	}
	aspec := &r.deployments["flowlens-aggregator"].Spec.Template.Spec
	ac := containerNamed(t, aspec, "aggregator")
	apath := materialise(t, aspec, ac, mountedConfig(t, r, aspec, ac, "/etc/flowlens/aggregator.yaml"), t.TempDir())
	if _, err := aggregatorconfig.Load(apath); err == nil || !strings.Contains(err.Error(), "inputQueue") {
		t.Errorf("aggregator config with inputQueue 0: %v", err)
	}

	out, err := helmTemplate(t, "--set", "aggregator.enabled=false")
	if err == nil || !strings.Contains(out, "aggregator.address is required") {
		t.Errorf("no aggregator and no address: err %v, output %s", err, out)
	}
}
