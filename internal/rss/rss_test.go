package rss

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// Peak is the kernel's high-water mark: at least what is resident now, and
// it rises with memory that is touched.
func TestPeak(t *testing.T) {
	before := Peak()
	if before == 0 && runtime.GOOS == "windows" {
		t.Skip("no getrusage on Windows")
	}
	if before <= 0 {
		t.Fatalf("Peak %d", before)
	}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		var rssKB int64
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				rssKB, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
		if rssKB == 0 || before < rssKB*1024 {
			t.Errorf("Peak %d bytes, below VmRSS %d kB", before, rssKB)
		}
	}
	buf := make([]byte, before+64<<20) // more than the peak so far
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	if after := Peak(); after < int64(len(buf)) {
		t.Errorf("Peak %d bytes after touching %d", after, len(buf))
	}
	runtime.KeepAlive(buf)
}
