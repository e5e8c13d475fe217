//go:build gpu

package devices

import (
	"fmt"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/cuda"
	"github.com/alexring/alexring/alexnet/cuda/probe"
)

// CUDA says whether this build has the GPU backend.
const CUDA = true

func selectGPU(gpu int, conv string) (alexnet.Compute, error) {
	cfg := cuda.Config{GPU: gpu, Conv: conv}
	if err := cfg.Validate(); err != nil {
		return alexnet.Compute{}, fmt.Errorf("--gpu %d --conv %s: %w", gpu, conv, err)
	}
	// A device that is not there is a bad flag, refused before any work.
	if n := probe.Devices(); gpu >= n {
		return alexnet.Compute{}, fmt.Errorf("--gpu %d: this machine has %d CUDA device(s), 0 to %d", gpu, n, n-1)
	}
	return alexnet.Compute{
		Device: fmt.Sprintf("cuda:%d", gpu),
		// The ring's classifier part goes during the backward pass: the GPU
		// computes while the CPU sends.
		FreesCPU: true,
		New: func(bc alexnet.BackendConfig) (alexnet.Backend, error) {
			m, err := cuda.New(cfg, bc)
			if err != nil {
				return nil, fmt.Errorf("--gpu %d: %w", gpu, err)
			}
			return m, nil
		},
	}, nil
}
