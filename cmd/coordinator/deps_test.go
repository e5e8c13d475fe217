package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The coordinator runs on CPU nodes: no build of it may link the CUDA driver
// (gorgonia.org/cu exits the process at start where cuInit fails), neither
// the default one nor the GPU backend's (tag gpu).
func TestCoordinatorLinksNoCUDA(t *testing.T) {
	for _, tags := range []string{"", "gpu"} {
		out, err := exec.Command("go", "list", "-tags", tags, "-deps", ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go list -tags %q -deps: %v\n%s", tags, err, out)
		}
		for _, pkg := range strings.Fields(string(out)) {
			if strings.HasPrefix(pkg, "gorgonia.org/cu") || strings.HasSuffix(pkg, "/alexnet/cuda") || strings.HasSuffix(pkg, "/alexnet/gpu") {
				t.Errorf("with tags %q the coordinator links %s", tags, pkg)
			}
		}
	}
}

// The coordinator package holds no model: it imports neither the worker nor
// alexnet, nor gorgonia or gonum through anything else; and the worker
// imports nothing of the coordinator's. The job contract (configs) and the
// wire (internal/cluster) are what they share.
func TestCoordinatorAndWorkerShareOnlyTheContract(t *testing.T) {
	const mod = "github.com/alexring/alexring/"
	for pkg, banned := range map[string][]string{
		mod + "coordinator": {mod + "worker", mod + "alexnet", "gorgonia.org/", "gonum.org/"},
		mod + "worker":      {mod + "coordinator"},
	} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range banned {
				if dep == b || strings.HasPrefix(dep, b+"/") || (strings.HasSuffix(b, "/") && strings.HasPrefix(dep, b)) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
