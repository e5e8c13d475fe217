package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --save-format pth writes best.pth alone; a bad value is exit 2 naming the
// flag; a joined worker refuses it, as it is the job's (the coordinator's).
func TestSaveFormatFlag(t *testing.T) {
	out := t.TempDir()
	code, stdout, stderr := runWorker("--standalone", "--variant", "tiny", "--epochs", "1", "--batch", "4", "--data", data(t), "--out", out, "--save-format", "pth")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "best.pth")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(out, "best.safetensors")); err == nil {
		t.Error("best.safetensors written with --save-format pth")
	}
	if code, _, stderr := runWorker("--standalone", "--out", t.TempDir(), "--save-format", "onnx"); code != 2 || !strings.Contains(stderr, "--save-format") {
		t.Errorf("--save-format onnx: exit %d, want 2 naming the flag:\n%s", code, stderr)
	}
	if code, _, stderr := runWorker("--join", "127.0.0.1:1", "--save-format", "pth"); code != 2 || !strings.Contains(stderr, "--save-format is the job's setting") {
		t.Errorf("--join with --save-format: exit %d, want 2:\n%s", code, stderr)
	}
}
