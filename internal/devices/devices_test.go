package devices

import (
	"strings"
	"testing"
)

func TestSelect(t *testing.T) {
	c, err := Select(-1, "auto")
	if err != nil || c.Device != "cpu" || c.New == nil || c.FreesCPU {
		t.Fatalf("Select(-1, auto) = %+v, %v; want the CPU", c, err)
	}
	for _, tc := range []struct {
		gpu  int
		conv string
		want string
	}{
		{-1, "fft", `--conv "fft"`},
		{-1, "gemm", "--conv gemm chooses the GPU's convolution"},
		{-1, "", `--conv ""`},
	} {
		if _, err := Select(tc.gpu, tc.conv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Select(%d, %q) = %v, want an error with %q", tc.gpu, tc.conv, err, tc.want)
		}
	}
	if !CUDA {
		if _, err := Select(0, "auto"); err == nil || !strings.Contains(err.Error(), "--gpu 0: this build has no GPU backend") {
			t.Errorf("Select(0) without cuda = %v, want the build named", err)
		}
	}
}
