package alexnet

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/alexring/alexring/alexnet/onednn"
)

// What a model holds in memory, estimated from its spec before anything is
// allocated, so that a batch too large for the machine is refused with a
// message rather than ended by the Go runtime's out-of-memory crash. The
// counts follow the CPU graphs (net.go): every op keeps its output, so a
// training graph holds each layer's activation, its ReLU's and pool's
// outputs and, in the backward pass, a gradient of most of them. The per-image
// counts are the same for any backend that keeps every activation of the
// batch, as the GPU model does.

// Footprint is an estimate in bytes, by part.
type Footprint struct {
	// State is the parameter-sized vectors: parameters, gradient and Adam's
	// two moments.
	State int64
	// Train is the training graph for its batch: activations, their
	// gradients, dropout masks, targets, and the convolutions' scratch
	// (im2col's patch buffers, or oneDNN's buffers and arena), which every
	// graph shares.
	Train int64
	// Eval is the evaluation graph for its batch.
	Eval int64
}

// Total is the sum of the parts.
func (f Footprint) Total() int64 { return AddSat(AddSat(f.State, f.Train), f.Eval) }

// String names the parts.
func (f Footprint) String() string {
	return fmt.Sprintf("training %s, evaluation %s, parameter-sized vectors %s",
		FormatBytes(f.Train), FormatBytes(f.Eval), FormatBytes(f.State))
}

// CPUFootprint is what the CPU backend and the trainer around it hold for a
// training batch (0: none) and an evaluation batch (0: none).
// The graphs built next convolve with the kernels CurrentCPUKernels would
// give them; where none were chosen yet, with what auto would choose (judged
// without loading oneDNN: a coordinator checking its local workers' batch
// never convolves).
func CPUFootprint(s Spec, batch, evalBatch int) Footprint {
	return cpuFootprint(s, batch, evalBatch, footprintKernels(s))
}

func cpuFootprint(s Spec, batch, evalBatch int, k CPUKernels) Footprint {
	n := int64(s.NumParams())
	f := Footprint{State: 4 * 4 * n} // params, gradient, M, V (a checkpoint writes them as they are)
	dnn := k == KernelsOneDNN
	if batch > 0 {
		f.Train = MulSat(int64(batch), 4*s.ImageFloats(true))
		if dnn {
			kept, arena := s.dnnFloats(batch, true)
			_, evalArena := s.dnnFloats(evalBatch, false)
			f.Train = AddSat(f.Train, MulSat(4, AddSat(kept, max(arena, evalArena)))) // one arena for both
		} else { // the patches are shared too
			f.Train = AddSat(f.Train, 4*s.batchScratchFloats(max(batch, evalBatch), true))
		}
	}
	if evalBatch > 0 {
		f.Eval = MulSat(int64(evalBatch), 4*s.ImageFloats(false))
		switch {
		case batch > 0: // the shared scratch is counted in Train
		case !dnn:
			f.Eval = AddSat(f.Eval, 4*s.batchScratchFloats(evalBatch, false))
		default:
			_, arena := s.dnnFloats(evalBatch, false)
			f.Eval = AddSat(f.Eval, MulSat(4, arena))
		}
	}
	return f
}

// footprintKernels is what the next graph of s convolves with.
func footprintKernels(s Spec) CPUKernels {
	kernelsMu.Lock()
	chosen := kernels
	kernelsMu.Unlock()
	if chosen != nil {
		return resolve(*chosen, s).Kernels
	}
	noDNN := ""
	if !onednn.Available {
		noDNN = "no oneDNN"
	}
	k, _ := autoKernels(noDNN, goISA(), s)
	return k
}

// dnnFloats is what oneDNN holds in C memory for a graph of batch, in 4-byte
// values: kept, the layers' buffers kept from one call to the next (in
// training every layer but the first keeps x and dy in its primitives'
// layout, for backward weights and data), and the arena that all layers
// share, as large as the largest call's temporary tensors: the weights and
// the output in the primitive's layout (in inference also the input; in
// backward data the input's gradient). The layouts block the channels by 16
// (AVX-512; 8 on AVX2), so the channels are rounded up to 16. For the seed
// model this is what oneDNN 2.6.3 reports (TestDNNFloatsMatchOneDNN); its
// scratchpads (under 2 MB for the seed at batch 64) are left out.
func (s Spec) dnnFloats(batch int, train bool) (kept, arena int64) {
	if batch < 1 {
		return 0, 0
	}
	b := int64(batch)
	for i, c := range s.Convs() {
		in, out := int64(c.In), int64(roundUp(c.Out, 16))
		if i > 0 {
			in = int64(roundUp(c.In, 16))
		}
		x := in * int64(c.InSide) * int64(c.InSide)
		y := out * int64(c.OutSide) * int64(c.OutSide)
		w := out * in * int64(c.Kernel) * int64(c.Kernel)
		per := y // forward's output; in training its input is kept, or plain (the first layer's)
		switch {
		case !train:
			per = x + y
		case i > 0:
			kept = AddSat(kept, MulSat(b, x+y))
			per = max(x, y) // backward data's dx is as large as x
		}
		arena = max(arena, AddSat(w, MulSat(b, per)))
	}
	return kept, arena
}

func roundUp(n, m int) int { return (n + m - 1) / m * m }

// ImageBytes is one input image as the loader hands it over (CHW float32).
func (s Spec) ImageBytes() int64 { return 4 * 3 * int64(s.Input) * int64(s.Input) }

// ImageFloats is the 4-byte values a graph holds per image of its batch: the
// input, every op's output and, when training, every gradient and the
// dropout masks. (A seed training image holds 1.67M, 6.7 MB.)
func (s Spec) ImageFloats(train bool) int64 {
	grad := int64(0) // a gradient beside each forward value when training
	if train {
		grad = 1
	}
	total := 3 * int64(s.Input) * int64(s.Input) // the input
	for i, c := range s.Convs() {
		out := int64(c.Out) * int64(c.OutSide) * int64(c.OutSide)
		// The convolution's and the ReLU's outputs, and their gradients; but
		// gorgonia's register allocation gives a gradient the convolution's
		// buffer, dead once its ReLU ran (measured: memory_test.go).
		total += out * (2 + grad)
		if c.PoolAfter {
			pooled := int64(c.Out) * int64(c.PooledSide) * int64(c.PooledSide)
			total += 2 * pooled // the pool's output and its argmax (int32)
			total += out * grad // the pool's gradient
		}
		if i > 0 {
			total += int64(c.In) * int64(c.InSide) * int64(c.InSide) * grad // the input's gradient
		}
	}
	for _, l := range s.Linears() {
		in, out := int64(l.In), int64(l.Out)
		if l.DropoutBefore && train {
			total += 3 * in // the mask, the masked input, its gradient
		}
		total += out + in*grad // the output; the input's gradient
		if l.ReLUAfter {
			total += out * (1 + grad)
		}
	}
	return total + 2*int64(s.Classes)*grad // the targets and the logits' gradient
}

// batchScratchFloats is what the im2col path's ops hold per piece of the
// batch (one piece per goroutine, at most parts), in buffers every op of
// every graph shares (conv.go's patches): the largest layer's patches and,
// in training, the largest weight gradient's partial sums.
func (s Spec) batchScratchFloats(batch int, train bool) int64 {
	pieces := int64(min(parts, batch))
	var cols, sums int64
	for _, c := range s.Convs() {
		cols = max(cols, int64(c.In)*int64(c.Kernel)*int64(c.Kernel)*int64(c.OutSide)*int64(c.OutSide))
		if train {
			sums = max(sums, int64(c.Out)*int64(c.In)*int64(c.Kernel)*int64(c.Kernel))
		}
	}
	return pieces * (cols + sums)
}

// MulSat and AddSat saturate at MaxInt64: a batch of 10^15 images must give
// a huge estimate, not a wrapped one.
func MulSat(a, b int64) int64 {
	if a != 0 && b > math.MaxInt64/a {
		return math.MaxInt64
	}
	return a * b
}

func AddSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// FormatBytes writes n in binary units (KiB, MiB, ...).
func FormatBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n), -1
	for v >= 1024 && unit < 5 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %s", v, [...]string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}[unit])
}

// HostMemory is the memory this process can still take: MemAvailable of
// /proc/meminfo, or less where a cgroup's limit (a container's) leaves less.
// from says which figure it is. On a system without /proc/meminfo it fails.
func HostMemory() (avail int64, from string, err error) { return hostMemory("/") }

// hostMemory reads the files under root (a test's fake /proc and /sys).
func hostMemory(root string) (int64, string, error) {
	meminfo := filepath.Join(root, "proc", "meminfo")
	data, err := os.ReadFile(meminfo)
	if err != nil {
		return 0, "", fmt.Errorf("alexnet: the machine's memory: %w", err)
	}
	avail, ok := meminfoField(data, "MemAvailable")
	if !ok {
		return 0, "", fmt.Errorf("alexnet: no MemAvailable in %s", meminfo)
	}
	from := "MemAvailable in " + meminfo
	for _, dir := range cgroupDirs(root) {
		if left, limit, ok := cgroupLeft(dir); ok && left < avail {
			if root != "/" {
				dir = strings.TrimPrefix(dir, filepath.Clean(root))
			}
			avail, from = left, fmt.Sprintf("the %s limit of cgroup %s, less what it uses", FormatBytes(limit), dir)
		}
	}
	return avail, from, nil
}

// meminfoField is a /proc/meminfo value in bytes.
func meminfoField(data []byte, name string) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || key != name {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		if len(f) > 1 && f[1] == "kB" {
			v = MulSat(v, 1024)
		}
		return v, true
	}
	return 0, false
}

// cgroupDirs are the memory cgroups this process is in, and every one above
// it (a parent's limit binds too): cgroup v2's unified tree and v1's memory
// controller, as /proc/self/cgroup names them. Inside a container the path
// it names may be the host's; the container's own root is tried as well.
func cgroupDirs(root string) []string {
	data, err := os.ReadFile(filepath.Join(root, "proc", "self", "cgroup"))
	if err != nil {
		return nil
	}
	var dirs []string
	add := func(mount, path string) {
		for p := filepath.Join(mount, path); ; p = filepath.Dir(p) {
			dirs = append(dirs, p)
			if len(p) <= len(mount) {
				break
			}
		}
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			add(filepath.Join(root, "sys", "fs", "cgroup"), parts[2])
		case hasController(parts[1], "memory"):
			add(filepath.Join(root, "sys", "fs", "cgroup", "memory"), parts[2])
		}
	}
	return dirs
}

func hasController(list, name string) bool {
	for _, c := range strings.Split(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// cgroupLeft is what a cgroup's limit leaves: the limit less what its
// processes use, not counting the page cache the kernel reclaims first
// (inactive files), as the kubelet counts a container's working set. ok is
// false without a limit.
func cgroupLeft(dir string) (left, limit int64, ok bool) {
	limit, ok1 := readInt(filepath.Join(dir, "memory.max")) // v2; "max" when none
	usage, ok2 := readInt(filepath.Join(dir, "memory.current"))
	inactive := "inactive_file"
	if !ok1 {
		limit, ok1 = readInt(filepath.Join(dir, "memory.limit_in_bytes")) // v1
		usage, ok2 = readInt(filepath.Join(dir, "memory.usage_in_bytes"))
		inactive = "total_inactive_file"
	}
	// v1 writes "no limit" as a number near 2^63.
	if !ok1 || !ok2 || limit >= math.MaxInt64/2 {
		return 0, 0, false
	}
	if stat, err := os.ReadFile(filepath.Join(dir, "memory.stat")); err == nil {
		if v, ok := statField(stat, inactive); ok && v <= usage {
			usage -= v
		}
	}
	return max(0, limit-usage), limit, true
}

func readInt(path string) (int64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return v, err == nil
}

func statField(data []byte, name string) (int64, bool) {
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == name {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
