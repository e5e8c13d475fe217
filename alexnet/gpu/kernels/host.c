//go:build cgo && !purego

// host.c: the host build of the kernels. It runs the bodies of kernels.h
// for every item exactly as the device's grid-stride loops visit them, with
// the arguments unpacked from the 8-byte words a device launch passes.
#include "kernels.h"

// The kernels in doc.go's order, with their argument counts (after n).
static const struct {
	const char *name;
	int nargs;
} table[] = {
	{"im2col", 9},
	{"col2im", 9},
	{"bias_act", 5},
	{"relu_backward", 3},
	{"maxpool_forward", 7},
	{"maxpool_backward", 7},
	{"mask_multiply", 3},
	{"softmax_xent", 5},
	{"adam", 11},
	{"nonfinite", 2},
	{"nchw_to_cnhw", 5},
	{"cnhw_to_nchw", 5},
};

int kernels_count(void) { return (int)(sizeof table / sizeof table[0]); }
const char *kernels_name(int k) { return table[k].name; }
int kernels_nargs(int k) { return table[k].nargs; }

static double bits_double(uint64_t b)
{
	double d;
	memcpy(&d, &b, sizeof d);
	return d;
}

// The argument words as the wrappers' parameter types.
#define F32(k) ((float *)(uintptr_t)a[k])
#define I32(k) ((int32_t *)(uintptr_t)a[k])
#define I64(k) ((int64_t)a[k])
#define F64(k) bits_double(a[k])

// GRID_STRIDE runs body for each item of each thread of each block, as
// kernels.cu's FOR_EACH_ITEM with blockIdx.x = blk, threadIdx.x = thr.
#define GRID_STRIDE(body) \
	for (int64_t blk = 0; blk < grid; blk++) \
		for (int64_t thr = 0; thr < block; thr++) \
			for (int64_t i = blk * block + thr; i < n; i += block * grid) \
				body

// kernels_run runs kernel k (an index into table) over n items with the
// given grid and block; the caller checked k and the argument count.
void kernels_run(int k, int64_t n, const uint64_t *a, int64_t grid, int64_t block)
{
	switch (k) {
	case 0:
		GRID_STRIDE(im2col_body(i, F32(0), F32(1), I64(2), I64(3), I64(4), I64(5), I64(6), I64(7), I64(8)));
		break;
	case 1:
		GRID_STRIDE(col2im_body(i, F32(0), F32(1), I64(2), I64(3), I64(4), I64(5), I64(6), I64(7), I64(8)));
		break;
	case 2:
		GRID_STRIDE(bias_act_body(i, F32(0), F32(1), I64(2), I64(3), I64(4)));
		break;
	case 3:
		GRID_STRIDE(relu_backward_body(i, F32(0), F32(1), F32(2)));
		break;
	case 4:
		GRID_STRIDE(maxpool_forward_body(i, F32(0), F32(1), I32(2), I64(3), I64(4), I64(5), I64(6)));
		break;
	case 5:
		GRID_STRIDE(maxpool_backward_body(i, F32(0), I32(1), F32(2), I64(3), I64(4), I64(5), I64(6)));
		break;
	case 6:
		GRID_STRIDE(mask_multiply_body(i, F32(0), F32(1), F32(2)));
		break;
	case 7:
		GRID_STRIDE(softmax_xent_body(i, F32(0), F32(1), F32(2), F32(3), I64(4)));
		break;
	case 8:
		GRID_STRIDE(adam_body(i, F32(0), F32(1), F32(2), F32(3), F64(4), F64(5), F64(6), F64(7), F64(8), F64(9), F64(10)));
		break;
	case 9:
		GRID_STRIDE(nonfinite_body(i, F32(0), I32(1)));
		break;
	case 10:
		GRID_STRIDE(nchw_to_cnhw_body(i, F32(0), F32(1), I64(2), I64(3), I64(4)));
		break;
	case 11:
		GRID_STRIDE(cnhw_to_nchw_body(i, F32(0), F32(1), I64(2), I64(3), I64(4)));
		break;
	}
}
