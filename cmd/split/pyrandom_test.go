package main

import (
	"encoding/json"
	"os/exec"
	"slices"
	"testing"
)

// Values printed by CPython 3.11 (random.seed(s); random.getrandbits(32) and
// random.sample(range(n), k)), so that the draw is checked without Python.
func TestPyRandomGolden(t *testing.T) {
	r := newPyRandom(0)
	for i, want := range []uint32{3626764237, 1654615998, 3255389356} {
		if got := r.uint32(); got != want {
			t.Errorf("seed 0, draw %d: %d, want %d", i, got, want)
		}
	}
	for _, tc := range []struct {
		seed uint64
		n, k int
		want []int
	}{
		{0, 100, 10, []int{49, 97, 53, 5, 33, 65, 62, 51, 38, 61}}, // a set of drawn indices
		{0, 20, 7, []int{12, 13, 1, 8, 15, 6, 19}},                 // a pool
		{1<<40 + 5, 633, 63, []int{516, 529, 275, 28, 543, 47, 169, 81, 137, 244, 140, 253, 389, 124, 566, 235, 478, 56, 114, 436, 45, 337, 449, 292, 133, 97, 180, 346, 58, 228, 473, 119, 152, 560, 225, 632, 131, 631, 592, 102, 528, 299, 170, 138, 61, 548, 288, 313, 381, 194, 282, 279, 536, 454, 493, 580, 25, 106, 202, 76, 477, 229, 293}},
	} {
		got, err := newPyRandom(tc.seed).sample(tc.n, tc.k)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("seed %d, sample(range(%d), %d) = %v, %v; want %v", tc.seed, tc.n, tc.k, got, err, tc.want)
		}
	}
}

// Against the Python here, when there is one: many sizes (both of sample's
// methods, and the edge between them), one generator across calls as the
// split uses it.
func TestPyRandomMatchesPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 to compare with (TestPyRandomGolden holds its values)")
	}
	type draw struct{ N, K int }
	var draws []draw
	for _, n := range []int{1, 2, 9, 10, 11, 21, 22, 40, 41, 100, 101, 633, 898, 4000} {
		for _, k := range []int{0, 1, n / 10, n / 2, n} {
			draws = append(draws, draw{n, k})
		}
	}
	seeds := []uint64{0, 1, 42, 1<<32 - 1, 1 << 32, 1<<63 + 12345}
	in, _ := json.Marshal(map[string]any{"seeds": seeds, "draws": draws})
	script := `import json, random, sys
job = json.loads(sys.argv[1])
out = []
for s in job["seeds"]:
    random.seed(s)
    out.append([random.sample(range(d["N"]), d["K"]) for d in job["draws"]])
print(json.dumps(out))`
	out, err := exec.Command(py, "-c", script, string(in)).Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	var want [][][]int
	if err := json.Unmarshal(out, &want); err != nil || len(want) != len(seeds) {
		t.Fatalf("python3 printed %q: %v", out, err)
	}
	for si, seed := range seeds {
		r := newPyRandom(seed)
		for i, d := range draws {
			got, err := r.sample(d.N, d.K)
			if err != nil || !slices.Equal(got, want[si][i]) {
				t.Fatalf("seed %d, draw %d: sample(range(%d), %d) = %v, %v; Python: %v", seed, i, d.N, d.K, got, err, want[si][i])
			}
		}
	}
}
