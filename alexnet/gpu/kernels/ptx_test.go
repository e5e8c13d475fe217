//go:build cgo && !purego

package kernels

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/alexring/alexring/alexnet"
)

var (
	entryRE = regexp.MustCompile(`(?m)^\.visible \.entry (\w+)\(`)
	paramRE = regexp.MustCompile(`(?m)^\s*\.param \.(\w+) (\w+)_param_\d+`)
)

// TestPTXEntries: each committed PTX file has exactly Names()'s entries, in
// order, for its architecture, and every parameter is 8 bytes, 1 + the
// argument count of the host table.
func TestPTXEntries(t *testing.T) {
	for _, c := range []struct {
		major, minor int
		arch         string
	}{{8, 0, "sm_80"}, {8, 9, "sm_80"}, {9, 0, "sm_90"}, {10, 0, "sm_90"}} {
		arch, ptx, err := PTX(c.major, c.minor)
		if err != nil || arch != c.arch {
			t.Fatalf("PTX(%d, %d) = %s, %v; want %s", c.major, c.minor, arch, err, c.arch)
		}
		if !bytes.Contains(ptx, []byte("\n.target "+c.arch+"\n")) {
			t.Errorf("PTX(%d, %d) is not built for %s", c.major, c.minor, c.arch)
		}
		var entries []string
		for _, m := range entryRE.FindAllSubmatch(ptx, -1) {
			entries = append(entries, string(m[1]))
		}
		if !slices.Equal(entries, Names()) {
			t.Errorf("%s entries %v, Names %v", arch, entries, Names())
		}
		params := map[string]int{}
		for _, m := range paramRE.FindAllSubmatch(ptx, -1) {
			if typ := string(m[1]); typ != "u64" && typ != "f64" && typ != "b64" {
				t.Errorf("%s: %s has a .%s parameter; every one must be 8 bytes", arch, m[2], typ)
			}
			params[string(m[2])]++
		}
		for name, k := range byName {
			if params[name] != k.nargs+1 {
				t.Errorf("%s: %s has %d parameters, want n and %d arguments", arch, name, params[name], k.nargs)
			}
		}
	}
}

// TestPTXTooOld: below sm_80 the error names the capability found and the
// minimum.
func TestPTXTooOld(t *testing.T) {
	_, ptx, err := PTX(7, 5)
	if err == nil || ptx != nil || !strings.Contains(err.Error(), "7.5") || !strings.Contains(err.Error(), "8.0") {
		t.Fatalf("PTX(7, 5) = %d bytes, %v; want an error naming 7.5 and 8.0", len(ptx), err)
	}
}

// TestDocListsNames: doc.go's contract lists the kernels of the host table,
// with as many arguments after n.
func TestDocListsNames(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	sig := regexp.MustCompile(`(?m)^//\t(\w+)\(n, ([^)]*)\)`)
	var listed []string
	for _, m := range sig.FindAllSubmatch(doc, -1) {
		name, args := string(m[1]), strings.Split(string(m[2]), ", ")
		listed = append(listed, name)
		if len(args) == 1 && args[0] == "..." {
			continue // "and cnhw_to_nchw(...)": the same arguments as its pair
		}
		if k, ok := byName[name]; !ok || k.nargs != len(args) {
			t.Errorf("doc.go: %s with %d arguments after n; the host table has %+v", name, len(args), k)
		}
	}
	// The last line lists the pair on one line: "nchw_to_cnhw(...) and cnhw_to_nchw(...)".
	if pair := regexp.MustCompile(`and (\w+)\(\.\.\.\)`).FindSubmatch(doc); pair != nil {
		listed = append(listed, string(pair[1]))
	}
	if !slices.Equal(listed, Names()) {
		t.Errorf("doc.go lists %v, Names %v", listed, Names())
	}
}

// TestPTXUpToDate regenerates the PTX when nvcc is here and compares it with
// the committed files (CI does the same with gen.sh and cmp).
func TestPTXUpToDate(t *testing.T) {
	if _, err := exec.LookPath("nvcc"); err != nil {
		t.Skip("no nvcc: the committed PTX is not regenerated")
	}
	dir := t.TempDir()
	if out, err := exec.Command("bash", "gen.sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("gen.sh: %v\n%s", err, out)
	}
	for _, f := range []string{"kernels_sm80.ptx", "kernels_sm90.ptx"} {
		fresh, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s differs from what gen.sh generates: run go generate ./alexnet/gpu/kernels", f)
		}
	}
}

// TestShapesLaunchEveryKernel: the geometry test's launches cover every kernel.
func TestShapesLaunchEveryKernel(t *testing.T) {
	spec, err := alexnet.NewSpec("tiny", 5)
	if err != nil {
		t.Fatal(err)
	}
	sizes := launchSizes(spec, 1)
	for _, name := range Names() {
		if len(sizes[name]) == 0 {
			t.Errorf("no layer shape launches %s", name)
		}
	}
	if len(sizes) != len(Names()) {
		t.Errorf("the shapes launch %d kernels, the host build has %d", len(sizes), len(Names()))
	}
}
