// Package devices turns the --gpu and --conv flags into where a command
// computes: the CPU graphs, or in a build with the cuda tag, the GPU backend
// (package alexnet/cuda). Only the commands that compute import it, so the
// coordinator never links the CUDA driver, in any build.
package devices

import (
	"fmt"

	"github.com/alexring/alexring/alexnet"
)

// ConvChoices are the values of --conv: auto (cuDNN once a GPU run has
// checked it, until then GEMM), cudnn or gemm (im2col + cuBLAS).
var ConvChoices = []string{"auto", "cudnn", "gemm"}

// Select returns the CPU for gpu < 0, else GPU gpu with the convolution conv.
func Select(gpu int, conv string) (alexnet.Compute, error) {
	known := false
	for _, c := range ConvChoices {
		known = known || c == conv
	}
	if !known {
		return alexnet.Compute{}, fmt.Errorf("--conv %q: want auto, cudnn or gemm", conv)
	}
	if gpu < 0 {
		if conv != "auto" {
			return alexnet.Compute{}, fmt.Errorf("--conv %s chooses the GPU's convolution; the CPU (--gpu %d) has one (im2col + %s)", conv, gpu, alexnet.BLAS)
		}
		return alexnet.CPUCompute(), nil
	}
	return selectGPU(gpu, conv)
}
