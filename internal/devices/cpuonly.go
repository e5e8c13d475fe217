//go:build !gpu

package devices

import (
	"fmt"

	"github.com/alexring/alexring/alexnet"
)

// CUDA says whether this build has the GPU backend.
const CUDA = false

func selectGPU(gpu int, _ string) (alexnet.Compute, error) {
	return alexnet.Compute{}, fmt.Errorf("--gpu %d: this build has no GPU backend; build with -tags gpu (see the README), or train on the CPU with --gpu -1", gpu)
}
