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
