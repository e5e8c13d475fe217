//go:build gpu

package cuda

import (
	"strings"
	"testing"
)

// TestCudnnLoadError: a library that does not open is reported with each
// name tried and why.
func TestCudnnLoadError(t *testing.T) {
	cudnnLib.Lock()
	defer cudnnLib.Unlock()
	_, _, err := tryCudnn([]string{"/nonexistent/libcudnn.so.9", "libcudnn-alexring-none.so"})
	if err == nil {
		t.Fatal("loaded a library that does not exist")
	}
	for _, want := range []string{"/nonexistent/libcudnn.so.9: ", "; libcudnn-alexring-none.so: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestCudnnVersion(t *testing.T) {
	for v, want := range map[int]string{8907: "8.9.7", 90100: "9.1.0", 91002: "9.10.2"} {
		if got := cudnnVersion(v); got != want || cudnnMajor(v) != int(want[0]-'0') {
			t.Errorf("cudnnVersion(%d) = %s, major %d; want %s", v, got, cudnnMajor(v), want)
		}
	}
}
