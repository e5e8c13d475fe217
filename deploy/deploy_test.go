package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of kustomize's file format the manifests use;
// decoding it strictly catches misspelt keys.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Labels     []struct {
		Pairs map[string]string `json:"pairs"`
	} `json:"labels"`
	Resources       []string `json:"resources"`
	SecretGenerator []struct {
		Name  string   `json:"name"`
		Type  string   `json:"type"`
		Files []string `json:"files"`
	} `json:"secretGenerator"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// objects are the manifests' resources by kind, decoded strictly as the
// Kubernetes API types: an unknown or misplaced field is an error.
type objects struct {
	namespaces   []corev1.Namespace
	pvcs         []corev1.PersistentVolumeClaim
	services     []corev1.Service
	deployments  []appsv1.Deployment
	statefulSets []appsv1.StatefulSet
}

func decode(t *testing.T, file string, doc []byte, objs *objects) {
	t.Helper()
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	where := file + ": " + tm.Kind
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		decodeInto(t, where, doc, &objs.namespaces)
	case "v1 PersistentVolumeClaim":
		decodeInto(t, where, doc, &objs.pvcs)
	case "v1 Service":
		decodeInto(t, where, doc, &objs.services)
	case "apps/v1 Deployment":
		decodeInto(t, where, doc, &objs.deployments)
	case "apps/v1 StatefulSet":
		decodeInto(t, where, doc, &objs.statefulSets)
	default:
		t.Errorf("%s: unexpected %q %q", file, tm.APIVersion, tm.Kind)
	}
}

// decodeInto decodes doc strictly as a T and appends it to list.
func decodeInto[T any](t *testing.T, where string, doc []byte, list *[]T) {
	t.Helper()
	var o T
	if err := yaml.UnmarshalStrict(doc, &o); err != nil {
		t.Errorf("%s: %v", where, err)
	}
	*list = append(*list, o)
}

func load(t *testing.T) (kustomization, objects) {
	t.Helper()
	var k kustomization
	b, err := os.ReadFile("k8s/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml is %s %s", k.APIVersion, k.Kind)
	}
	var objs objects
	for _, r := range k.Resources {
		b, err := os.ReadFile(filepath.Join("k8s", r))
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", r, err)
		}
		for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) != "" {
				decode(t, r, []byte(doc), &objs)
			}
		}
	}
	return k, objs
}

// flagsOf lists a command's flags from its --help.
func flagsOf(t *testing.T, bin string) map[string]bool {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 5 {
		t.Fatalf("%s --help lists %d flags:\n%s", bin, len(flags), out.String())
	}
	return flags
}

func arg(c corev1.Container, name string) string {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return strings.TrimSpace(strings.SplitN(v, "#", 2)[0])
		}
	}
	return ""
}

func TestKubernetesManifests(t *testing.T) {
	k, objs := load(t)
	if len(objs.namespaces) != 1 || objs.namespaces[0].Name != k.Namespace {
		t.Errorf("want the Namespace %q the kustomization sets", k.Namespace)
	}
	if len(objs.deployments) != 1 || len(objs.statefulSets) != 1 {
		t.Fatalf("want one coordinator Deployment and one worker StatefulSet, got %d and %d", len(objs.deployments), len(objs.statefulSets))
	}
	coord, workers := objs.deployments[0], objs.statefulSets[0]

	bins := t.TempDir()
	build := exec.Command("go", "build", "-o", bins+string(os.PathSeparator), "github.com/alexring/alexring/cmd/coordinator", "github.com/alexring/alexring/cmd/worker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the commands: %v\n%s", err, out)
	}
	flags := map[string]map[string]bool{
		"coordinator": flagsOf(t, filepath.Join(bins, "coordinator")),
		"worker":      flagsOf(t, filepath.Join(bins, "worker")),
	}
	secrets := map[string]bool{}
	for _, g := range k.SecretGenerator {
		secrets[g.Name] = true
	}
	claims := map[string]bool{}
	for _, p := range objs.pvcs {
		claims[p.Name] = true
	}
	images := map[string]bool{}
	for _, i := range k.Images {
		images[i.Name] = true
	}

	pods := map[string]corev1.PodTemplateSpec{"Deployment " + coord.Name: coord.Spec.Template, "StatefulSet " + workers.Name: workers.Spec.Template}
	selectors := map[string]*metav1.LabelSelector{"Deployment " + coord.Name: coord.Spec.Selector, "StatefulSet " + workers.Name: workers.Spec.Selector}
	for owner, pod := range pods {
		for key, v := range selectors[owner].MatchLabels {
			if pod.Labels[key] != v {
				t.Errorf("%s: the selector's %s=%s is not on its pods", owner, key, v)
			}
		}
		if sc := pod.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("%s: pods must run as a non-root user", owner)
		}
		volumes := map[string]bool{}
		for _, v := range pod.Spec.Volumes {
			volumes[v.Name] = true
			if v.Secret != nil && !secrets[v.Secret.SecretName] {
				t.Errorf("%s: volume %s uses Secret %s, which the kustomization does not generate", owner, v.Name, v.Secret.SecretName)
			}
			if v.PersistentVolumeClaim != nil && !claims[v.PersistentVolumeClaim.ClaimName] {
				t.Errorf("%s: volume %s claims %s, which is not defined", owner, v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		}
		for _, c := range pod.Spec.Containers {
			if !images[c.Image] {
				t.Errorf("%s: container %s image %q is not in the kustomization's images", owner, c.Name, c.Image)
			}
			for _, m := range c.VolumeMounts {
				if !volumes[m.Name] {
					t.Errorf("%s: container %s mounts %s, which is no volume", owner, c.Name, m.Name)
				}
				if m.MountPath == "/data" && !m.ReadOnly {
					t.Errorf("%s: the dataset must be mounted read-only", owner)
				}
			}
			known := flags[c.Command[0]]
			if known == nil {
				t.Fatalf("%s: container %s runs %v, not an alexring command", owner, c.Name, c.Command)
			}
			for _, a := range c.Args {
				name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if !known[name] {
					t.Errorf("%s: %s has no flag --%s", owner, c.Command[0], name)
				}
			}
		}
	}

	wc, cc := workers.Spec.Template.Spec.Containers[0], coord.Spec.Template.Spec.Containers[0]
	if gpu := wc.Resources.Limits["nvidia.com/gpu"]; gpu.Value() != 1 {
		t.Errorf("each worker wants nvidia.com/gpu: 1, has %v", gpu.String())
	}
	if n := arg(cc, "workers"); workers.Spec.Replicas == nil || n != itoa(*workers.Spec.Replicas) {
		t.Errorf("coordinator --workers=%s but the StatefulSet has %v replicas", n, workers.Spec.Replicas)
	}
	if arg(wc, "job") != arg(cc, "job-id") || arg(wc, "job") == "" {
		t.Errorf("worker --job=%q, coordinator --job-id=%q", arg(wc, "job"), arg(cc, "job-id"))
	}

	services := map[string]corev1.Service{}
	for _, s := range objs.services {
		services[s.Name] = s
	}
	if headless, ok := services[workers.Spec.ServiceName]; !ok || headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("the StatefulSet's serviceName %q is not a headless Service", workers.Spec.ServiceName)
	}
	join := arg(wc, "join")
	host, port, _ := strings.Cut(join, ":")
	if s, ok := services[host]; !ok || !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return itoa(p.Port) == port }) {
		t.Errorf("worker --join=%s is not a Service port", join)
	}
	for _, s := range objs.services {
		matched := false
		for owner, pod := range pods {
			all := true
			for key, v := range s.Spec.Selector {
				all = all && pod.Labels[key] == v
			}
			if !all {
				continue
			}
			matched = true
			names := map[string]bool{}
			for _, p := range pod.Spec.Containers[0].Ports {
				names[p.Name] = true
			}
			for _, p := range s.Spec.Ports {
				if p.TargetPort.Type == intstr.String && !names[p.TargetPort.StrVal] {
					t.Errorf("Service %s port %s targets %q, which %s does not name", s.Name, p.Name, p.TargetPort.StrVal, owner)
				}
			}
		}
		if !matched {
			t.Errorf("Service %s selects no pods", s.Name)
		}
	}

	script, err := os.ReadFile("k8s/make-secrets.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range k.SecretGenerator {
		for _, f := range g.Files {
			_, path, _ := strings.Cut(f, "=")
			if !strings.Contains(string(script), filepath.Base(path)) {
				t.Errorf("make-secrets.sh does not write %s, which Secret %s reads", path, g.Name)
			}
		}
	}
}

func itoa(v int32) string { return strconv.Itoa(int(v)) }

// The images: multi-stage, a non-root user in the final stage, and a build of
// commands that exist.
func TestDockerfiles(t *testing.T) {
	for _, name := range []string{"Dockerfile", "Dockerfile.cuda"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		stages := strings.Split(text, "\nFROM ")
		if len(stages) < 3 && !(len(stages) == 2 && strings.HasPrefix(text, "FROM ")) {
			t.Errorf("%s: want a build stage and a runtime stage", name)
		}
		final := stages[len(stages)-1]
		if m := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(final); m == nil || strings.HasPrefix(m[1], "0") || strings.HasPrefix(m[1], "root") {
			t.Errorf("%s: the final stage must switch to a non-root USER", name)
		}
		build := regexp.MustCompile(`go build[^\n]*`).FindString(text)
		cmds := regexp.MustCompile(`\./cmd/(\w+)`).FindAllStringSubmatch(build, -1)
		if len(cmds) < 3 {
			t.Errorf("%s: go build line %q builds too little", name, build)
		}
		for _, c := range cmds {
			if _, err := os.Stat(filepath.Join("..", "cmd", c[1])); err != nil {
				t.Errorf("%s builds ./cmd/%s, which does not exist", name, c[1])
			}
		}
		if name == "Dockerfile.cuda" && !strings.Contains(build, "-tags gpu") {
			t.Errorf("%s does not build with -tags gpu", name)
		}
	}
}
