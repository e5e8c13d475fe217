package kernels

// The launch geometry every device uses for every kernel.

// Block is the threads per block of every launch: a multiple of the warp (32)
// well under the limit of 1024, small enough for several blocks per SM and
// large enough that the element-wise kernels keep the memory busy.
const Block = 256

// MaxGrid caps the blocks of a launch. The limit of gridDim.x is 2^31-1, but
// 65535 blocks of 256 threads (16.7M) is already some 60 times what an H200
// (132 SMs of 2048 threads) keeps resident; beyond, the grid-stride loop
// gives each thread more items, which costs nothing and keeps the block
// count in any int.
const MaxGrid = 65535

// Geometry is the grid and block of a launch over n items: ceil(n/Block)
// blocks of Block threads, at most MaxGrid blocks (the kernels' grid-stride
// loops cover the rest). n <= 0 gives (0, 0): launch nothing (CUDA refuses a
// grid of 0).
func Geometry(n int64) (grid, block int) {
	if n <= 0 {
		return 0, 0
	}
	blocks := (n + Block - 1) / Block
	if blocks > MaxGrid {
		blocks = MaxGrid
	}
	return int(blocks), Block
}
