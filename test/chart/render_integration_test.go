//go:build integration

// Package chart tests the Helm chart build/charts/flowlens without a
// cluster: it renders the chart with the real (pinned) helm for several
// value sets and checks what a cluster would run: security settings,
// RBAC, that every $(VAR) the kubelet must expand exists, and that the
// configurations the chart generates load with the agent's and the
// aggregator's own parsers, with the files they name where the pod's
// volumes put them.
package chart

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// repoRoot is the repository's root directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// kubeVersion is the Kubernetes version the chart is rendered for (the
// Makefile's KUBE_VERSION; helm's built-in default is older than the
// chart's kubeVersion constraint).
const kubeVersion = "1.31.0"

// rendering is one `helm template` output, decoded.
type rendering struct {
	configMaps   map[string]*corev1.ConfigMap
	services     map[string]*corev1.Service
	daemonSets   map[string]*appsv1.DaemonSet
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	clusterRoles []*rbacv1.ClusterRole
	roles        []*rbacv1.Role
	kinds        []string
}

// helmTemplate renders the chart with the given values files and --set
// arguments; it returns helm's combined output on failure.
func helmTemplate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	helm, err := exec.LookPath("helm")
	if err != nil {
		t.Fatalf("helm not found in PATH: run hack/install-deps.sh helm (%v)", err)
	}
	root := repoRoot(t)
	cmd := exec.Command(helm, append([]string{"template", "flowlens", filepath.Join(root, "build/charts/flowlens"),
		"--namespace", "flowlens", "--kube-version", kubeVersion}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return stderr.String(), fmt.Errorf("helm template %v: %w: %s", args, err, stderr.String())
	}
	return string(out), nil
}

func render(t *testing.T, args ...string) *rendering {
	t.Helper()
	out, err := helmTemplate(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	r := &rendering{
		configMaps: map[string]*corev1.ConfigMap{}, services: map[string]*corev1.Service{},
		daemonSets: map[string]*appsv1.DaemonSet{}, deployments: map[string]*appsv1.Deployment{},
		statefulSets: map[string]*appsv1.StatefulSet{},
	}
	for i, doc := range strings.Split(out, "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v\n%s", i, err, doc)
		}
		if meta.Kind == "" {
			continue
		}
		r.kinds = append(r.kinds, meta.Kind)
		var target interface{ GetName() string }
		switch meta.Kind {
		case "ConfigMap":
			target = &corev1.ConfigMap{}
		case "Service":
			target = &corev1.Service{}
		case "DaemonSet":
			target = &appsv1.DaemonSet{}
		case "Deployment":
			target = &appsv1.Deployment{}
		case "StatefulSet":
			target = &appsv1.StatefulSet{}
		case "ClusterRole":
			target = &rbacv1.ClusterRole{}
		case "Role":
			target = &rbacv1.Role{}
		case "ServiceAccount", "ClusterRoleBinding", "RoleBinding":
			continue
		default:
			t.Fatalf("unexpected kind %s in the chart's output", meta.Kind)
		}
		// Strict: a field the API types do not have is a chart bug.
		if err := yaml.UnmarshalStrict([]byte(doc), target); err != nil {
			t.Fatalf("%s document %d: %v", meta.Kind, i, err)
		}
		switch o := target.(type) {
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *corev1.Service:
			r.services[o.Name] = o
		case *appsv1.DaemonSet:
			r.daemonSets[o.Name] = o
		case *appsv1.Deployment:
			r.deployments[o.Name] = o
		case *appsv1.StatefulSet:
			r.statefulSets[o.Name] = o
		case *rbacv1.ClusterRole:
			r.clusterRoles = append(r.clusterRoles, o)
		case *rbacv1.Role:
			r.roles = append(r.roles, o)
		}
	}
	return r
}

// pods lists every pod template of the rendering by workload name.
func (r *rendering) pods() map[string]*corev1.PodSpec {
	out := map[string]*corev1.PodSpec{}
	for n, o := range r.daemonSets {
		out[n] = &o.Spec.Template.Spec
	}
	for n, o := range r.deployments {
		out[n] = &o.Spec.Template.Spec
	}
	for n, o := range r.statefulSets {
		out[n] = &o.Spec.Template.Spec
	}
	return out
}

func containerNamed(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == name {
			return &spec.InitContainers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

// flagsOf returns the flags a binary of this repository accepts, from its
// -h output, so an argument the chart passes that the binary does not
// know fails here rather than in a crash-looping pod.
func flagsOf(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	build := exec.Command("go", "build", "-o", bin, "./"+pkg)
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	out, _ := exec.Command(bin, "-h").CombinedOutput() // -h exits non-zero
	flags := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	re := regexp.MustCompile(`^\s+-{1,2}([a-z][a-z0-9-]*)`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			flags[m[1]] = true
		}
	}
	if len(flags) == 0 {
		t.Fatalf("%s -h lists no flags:\n%s", pkg, out)
	}
	return flags
}

// parseArgs splits --name=value arguments, failing on anything else and on
// flags the binary does not have.
func parseArgs(t *testing.T, args []string, known map[string]bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !ok {
			t.Fatalf("argument %q: want --name=value", a)
		}
		if !known[name] {
			t.Fatalf("argument %q: the binary has no flag %q (has %v)", a, name, known)
		}
		out[name] = value
	}
	return out
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand does what the kubelet does to a container's args: $(VAR) from
// the container's env, and from the variables of the namespace's
// Services (<NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT_<PORT NAME>). A
// reference to anything else stays unexpanded in a real pod, so it fails
// the test.
func expand(t *testing.T, r *rendering, c *corev1.Container, fieldValues map[string]string) []string {
	t.Helper()
	vars := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v, ok := fieldValues[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("env %s: no test value for field %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			vars[e.Name] = v
		default:
			vars[e.Name] = e.Value
		}
	}
	for name, svc := range r.services {
		prefix := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		ip := svc.Spec.ClusterIP
		if ip == "" {
			ip = "10.96.0.42" // allocated by the API server
		}
		vars[prefix+"_SERVICE_HOST"] = ip
		for _, p := range svc.Spec.Ports {
			if p.Name != "" {
				vars[prefix+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))] = fmt.Sprint(p.Port)
			}
		}
	}
	var out []string
	for _, a := range c.Args {
		out = append(out, varRef.ReplaceAllStringFunc(a, func(ref string) string {
			name := varRef.FindStringSubmatch(ref)[1]
			v, ok := vars[name]
			if !ok {
				t.Fatalf("container %s argument %q: $(%s) is neither in its env nor a Service variable", c.Name, a, name)
			}
			return v
		}))
	}
	return out
}

// materialise writes a configuration file the way the pod sees it: every
// path in it under a volume mount of container c is moved under dir, and
// the files that volume projects (Secret items) are created there, so
// the parsers' file checks pass only for files the pod really has.
func materialise(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, config, dir string) string {
	t.Helper()
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			t.Fatalf("container %s mounts volume %q, which the pod does not have", c.Name, m.Name)
		}
		if v.Secret == nil {
			continue
		}
		for _, item := range v.Secret.Items {
			p := filepath.Join(dir, m.MountPath, item.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("test\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		config = strings.ReplaceAll(config, m.MountPath+"/", filepath.Join(dir, m.MountPath)+"/")
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// mountedConfig returns the content of the ConfigMap key container c
// reads at path (a subPath mount of a configMap volume).
func mountedConfig(t *testing.T, r *rendering, spec *corev1.PodSpec, c *corev1.Container, path string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath != path && !strings.HasPrefix(path, m.MountPath+"/") {
			continue
		}
		key := m.SubPath
		if key == "" {
			key = strings.TrimPrefix(path, m.MountPath+"/")
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				cm, ok := r.configMaps[v.ConfigMap.Name]
				if !ok {
					t.Fatalf("volume %s: ConfigMap %s is not rendered", v.Name, v.ConfigMap.Name)
				}
				data, ok := cm.Data[key]
				if !ok {
					t.Fatalf("ConfigMap %s has no key %q", cm.Name, key)
				}
				return data
			}
		}
	}
	t.Fatalf("container %s: nothing mounted at %s", c.Name, path)
	return ""
}
