package kernels

import (
	"fmt"
	"math"
	"testing"

	"github.com/alexring/alexring/alexnet"
)

// launchSizes are the item counts of every launch of one step of spec at
// batch, per kernel, as the model issues them (package gpu's doc).
func launchSizes(spec alexnet.Spec, batch int) map[string][]int64 {
	b := int64(batch)
	sizes := map[string][]int64{}
	add := func(name string, n int64) { sizes[name] = append(sizes[name], n) }
	in := int64(spec.Input)
	add("nchw_to_cnhw", b*3*in*in)
	for _, c := range spec.Convs() {
		k, side, out := int64(c.Kernel), int64(c.InSide), int64(c.OutSide)
		add("im2col", int64(c.In)*k*k*b*out*out)
		add("col2im", int64(c.In)*b*side*side)
		add("bias_act", int64(c.Out)*b*out*out)
		add("relu_backward", int64(c.Out)*b*out*out)
		if c.PoolAfter {
			pooled := int64(c.PooledSide)
			add("maxpool_forward", int64(c.Out)*b*pooled*pooled)
			add("maxpool_backward", int64(c.Out)*b*out*out)
		}
	}
	add("cnhw_to_nchw", b*int64(spec.Flat()))
	for _, l := range spec.Linears() {
		add("bias_act", b*int64(l.Out))
		add("relu_backward", b*int64(l.Out))
		if l.DropoutBefore {
			add("mask_multiply", b*int64(l.In))
		}
	}
	add("softmax_xent", b)
	add("adam", int64(spec.NumParams()))
	add("nonfinite", int64(spec.NumParams()))
	return sizes
}

// TestGeometryEveryLayer checks the launch of every kernel and layer of the
// seed, full and tiny models at batches 1, 32 and 128 against CUDA's limits
// (block <= 1024 threads, a whole number of warps; grid in [1, 2^31-1]) and
// that the grid-stride loop covers n: a grid of ceil(n/Block) blocks, or
// MaxGrid blocks whose threads take several items each, without an index
// overflowing int64.
func TestGeometryEveryLayer(t *testing.T) {
	seen := map[string]bool{} // TestShapesLaunchEveryKernel checks the names
	for _, variant := range []string{"seed", "full", "tiny"} {
		spec, err := alexnet.NewSpec(variant, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, batch := range []int{1, 32, 128} {
			for name, ns := range launchSizes(spec, batch) {
				seen[name] = true
				for _, n := range ns {
					what := fmt.Sprintf("%s %s batch %d n=%d", variant, name, batch, n)
					if n < 1 {
						t.Fatalf("%s: no items", what)
					}
					grid, block := Geometry(n)
					if block < 32 || block > 1024 || block%32 != 0 {
						t.Errorf("%s: block %d", what, block)
					}
					if grid < 1 || grid > MaxGrid || int64(grid) > math.MaxInt32 {
						t.Errorf("%s: grid %d", what, grid)
					}
					threads := int64(grid) * int64(block)
					if want := min((n+int64(block)-1)/int64(block), MaxGrid); int64(grid) != want {
						t.Errorf("%s: grid %d, want %d", what, grid, want)
					}
					if threads < n && grid != MaxGrid {
						t.Errorf("%s: %d threads for %d items below the grid cap", what, threads, n)
					}
					if n > math.MaxInt64-threads {
						t.Errorf("%s: the stride loop's index overflows", what)
					}
				}
			}
		}
	}
	if len(seen) != 12 {
		t.Errorf("the shapes launch %d kernels, doc.go lists 12", len(seen))
	}
}

// TestGeometryEdges: nothing for n <= 0, one block for 1 item, a partial
// last block, and the cap.
func TestGeometryEdges(t *testing.T) {
	for _, c := range []struct {
		n           int64
		grid, block int
	}{
		{-1, 0, 0}, {0, 0, 0}, {1, 1, Block}, {Block, 1, Block}, {Block + 1, 2, Block},
		{MaxGrid * Block, MaxGrid, Block}, {MaxGrid*Block + 1, MaxGrid, Block}, {1 << 40, MaxGrid, Block},
	} {
		if grid, block := Geometry(c.n); grid != c.grid || block != c.block {
			t.Errorf("Geometry(%d) = %d, %d; want %d, %d", c.n, grid, block, c.grid, c.block)
		}
	}
}
