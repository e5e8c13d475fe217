package hostdev

// What each kernel's launch must pass and what memory it touches: the table
// Launch checks a launch against before the host build runs it.

import (
	"fmt"
	"math"
)

// signature is what a kernel's launch must pass after n: kinds holds one
// letter per argument (p: a gpu.Ptr, i: an int64, d: a float64), and
// touches checks the launch's geometry and says how many 4-byte values it
// reads or writes through each pointer.
type signature struct {
	kinds   string
	touches func(n int64, v []int64) ([]extent, error)
}

// extent is a pointer argument and the values a launch touches through it.
type extent struct {
	arg   int
	elems int64
}

// signatures follows package kernels' doc.go, kernel by kernel.
var signatures = map[string]signature{
	"im2col": {"ppiiiiiii", func(n int64, v []int64) ([]extent, error) {
		x, col, err := convExtents(v[2:9])
		if err == nil && n != col {
			err = fmt.Errorf("n = %d, want channels*K*K*batch*outSide^2 = %d", n, col)
		}
		return []extent{{0, x}, {1, col}}, err
	}},
	"col2im": {"ppiiiiiii", func(n int64, v []int64) ([]extent, error) {
		x, col, err := convExtents(v[2:9])
		if err == nil && n != x {
			err = fmt.Errorf("n = %d, want channels*batch*side^2 = %d", n, x)
		}
		return []extent{{0, col}, {1, x}}, err
	}},
	"bias_act": {"ppiii", func(n int64, v []int64) ([]extent, error) {
		inner, channels := v[2], v[3]
		if err := positive(inner, channels); err != nil {
			return nil, err
		}
		return []extent{{0, n}, {1, min(channels, (n-1)/inner+1)}}, nil
	}},
	"relu_backward":    {"ppp", same(0, 1, 2)},
	"mask_multiply":    {"ppp", same(0, 1, 2)},
	"adam":             {"ppppddddddd", same(0, 1, 2, 3)},
	"maxpool_forward":  {"pppiiii", pool(false)},
	"maxpool_backward": {"pppiiii", pool(true)},
	"softmax_xent": {"ppppi", func(n int64, v []int64) ([]extent, error) {
		if err := positive(v[4]); err != nil {
			return nil, err
		}
		all, ok := product(n, v[4])
		if !ok {
			return nil, fmt.Errorf("%d rows of %d classes overflow", n, v[4])
		}
		return []extent{{0, all}, {1, all}, {2, all}, {3, all}}, nil
	}},
	"nonfinite":    {"pp", func(n int64, v []int64) ([]extent, error) { return []extent{{0, n}, {1, 1}}, nil }},
	"nchw_to_cnhw": {"ppiii", transpose},
	"cnhw_to_nchw": {"ppiii", transpose},
}

// same is a kernel that touches n values through each of the given pointers.
func same(args ...int) func(int64, []int64) ([]extent, error) {
	return func(n int64, _ []int64) ([]extent, error) {
		e := make([]extent, len(args))
		for i, a := range args {
			e[i] = extent{a, n}
		}
		return e, nil
	}
}

// positive rejects a size below 1 or so large that products of a few of
// them could overflow (the kernels divide by them).
func positive(v ...int64) error {
	for _, x := range v {
		if x < 1 || x > math.MaxInt32 {
			return fmt.Errorf("size %d out of [1, 2^31)", x)
		}
	}
	return nil
}

// product multiplies sizes, reporting an overflow.
func product(v ...int64) (int64, bool) {
	p := int64(1)
	for _, x := range v {
		if x != 0 && p > math.MaxInt64/x {
			return 0, false
		}
		p *= x
	}
	return p, true
}

// convExtents checks im2col's geometry (batch, channels, side, kernel,
// stride, pad, outSide: PyTorch's floor mode) and returns the sizes of the
// image x and of the patches.
func convExtents(v []int64) (x, col int64, err error) {
	b, c, side, k, st, pad, o := v[0], v[1], v[2], v[3], v[4], v[5], v[6]
	if err := positive(b, c, side, k, st, o); err != nil {
		return 0, 0, err
	}
	if pad < 0 || pad > math.MaxInt32 || side+2*pad < k || o != (side+2*pad-k)/st+1 {
		return 0, 0, fmt.Errorf("side %d, kernel %d, stride %d, pad %d do not give outSide %d", side, k, st, pad, o)
	}
	x, ok1 := product(c, b, side, side)
	col, ok2 := product(c, k, k, b, o, o)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("sizes overflow")
	}
	return x, col, nil
}

// pool checks a max pool's geometry (side, outSide, kernel, stride; no
// padding, floor mode) over n items, planes of outSide^2 forward and side^2
// backward, and returns the extents of (x, y, argmax) or (dy, argmax, dx).
func pool(backward bool) func(int64, []int64) ([]extent, error) {
	return func(n int64, v []int64) ([]extent, error) {
		side, o, k, st := v[3], v[4], v[5], v[6]
		if err := positive(side, o, k, st); err != nil {
			return nil, err
		}
		if side < k || o != (side-k)/st+1 {
			return nil, fmt.Errorf("side %d, kernel %d, stride %d do not give outSide %d", side, k, st, o)
		}
		in, out := side*side, o*o
		if backward {
			if n%in != 0 {
				return nil, fmt.Errorf("n = %d is not a number of %dx%d planes", n, side, side)
			}
			planes := n / in
			return []extent{{0, planes * out}, {1, planes * out}, {2, n}}, nil
		}
		if n%out != 0 {
			return nil, fmt.Errorf("n = %d is not a number of %dx%d planes", n, o, o)
		}
		planes := n / out
		if _, ok := product(planes, in); !ok {
			return nil, fmt.Errorf("sizes overflow")
		}
		return []extent{{0, planes * in}, {1, n}, {2, n}}, nil
	}
}

// transpose checks a layout change of batch*channels*hw values.
func transpose(n int64, v []int64) ([]extent, error) {
	if err := positive(v[2], v[3], v[4]); err != nil {
		return nil, err
	}
	if all, ok := product(v[2], v[3], v[4]); !ok || all != n {
		return nil, fmt.Errorf("n = %d, want batch*channels*hw = %d*%d*%d", n, v[2], v[3], v[4])
	}
	return []extent{{0, n}, {1, n}}, nil
}
