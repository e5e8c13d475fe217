//go:build gpu

package cuda

import (
	"errors"
	"fmt"
	"strings"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/alexnet/gpu"
)

// ConvChoices are Config.Conv's values: auto (GEMM until a GPU run has
// checked cuDNN against it, then the one measured faster), cudnn, or gemm
// (the model's own im2col + cuBLAS).
var ConvChoices = []string{"auto", "cudnn", "gemm"}

// Config chooses the device and the convolution of the GPU backend.
type Config struct {
	GPU  int    // the device's ordinal (--gpu)
	Conv string // one of ConvChoices (--conv)
}

// Validate rejects a config before any device is touched; the errors name
// the value and what is allowed, the caller names the flag.
func (c Config) Validate() error {
	if c.GPU < 0 {
		return fmt.Errorf("cuda: device %d: the GPU backend needs a device ordinal of 0 or more", c.GPU)
	}
	for _, v := range ConvChoices {
		if c.Conv == v {
			return nil
		}
	}
	return fmt.Errorf("cuda: convolution %q: want one of %s", c.Conv, strings.Join(ConvChoices, ", "))
}

// New opens device cfg.GPU, builds the convolution cfg.Conv asks for and the
// GPU model (package gpu) on them from bc's host state. Its Describe names
// the device and the convolution (auto is GEMM until a GPU run has checked
// cuDNN against it). The backend owns the device: closing it closes the
// device.
func New(cfg Config, bc alexnet.BackendConfig) (*gpu.Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dev, err := Open(cfg.GPU)
	if err != nil {
		return nil, err
	}
	var conv gpu.Convolution // nil: the model's own im2col + GEMM
	if cfg.Conv == "cudnn" {
		c, err := NewCudnn(dev)
		if err != nil {
			return nil, errors.Join(err, dev.Close())
		}
		conv = c
	}
	return gpu.New(dev, bc, conv) // closes dev and conv when it fails
}
