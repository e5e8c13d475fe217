package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/sharding"
)

func runWorker(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(append(args, "--log-format", "json", "--progress", "never"), &o, &e)
	return code, o.String(), e.String()
}

func data(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := sharding.Synthesize(dir, sharding.SynthConfig{Train: 4, Val: 1, Size: 24, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The README's exit codes: 2 for bad flags, config or input. A missing
// --data, an --out that is a file, a missing or broken --resume and a batch
// larger than the data all exited 1 (the batch with the runtime's
// out-of-memory crash).
func TestStandaloneBadInputsExit2(t *testing.T) {
	d := data(t) // 20 training images, 5 validation images
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o644)
	truncated := filepath.Join(t.TempDir(), "state.safetensors")
	tiny := []string{"--standalone", "--variant", "tiny", "--epochs", "1", "--batch", "4"}
	if code, _, stderr := runWorker(append(tiny, "--data", d, "--out", filepath.Dir(truncated))...); code != 0 {
		t.Fatalf("a good run: exit %d\n%s", code, stderr)
	}
	whole, _ := os.ReadFile(truncated)
	os.WriteFile(truncated, whole[:len(whole)-1000], 0o644)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing data", []string{"--data", filepath.Join(d, "nope")}, "worker: --data: "},
		{"out is a file", []string{"--data", d, "--out", file}, "--out"},
		{"missing resume", []string{"--data", d, "--out", t.TempDir(), "--resume", filepath.Join(d, "nope.safetensors")}, "worker: --resume: "},
		{"truncated resume", []string{"--data", d, "--out", t.TempDir(), "--resume", truncated}, truncated},
		{"batch beyond the data", []string{"--data", d, "--out", t.TempDir(), "--batch", "100000000"}, "--batch 100000000: a global batch larger than the 20 training images"},
		{"batch beyond the demo data", []string{"--out", t.TempDir(), "--batch", "100000000"}, fmt.Sprintf("--batch 100000000: a global batch larger than the %d training images", sharding.DemoData.Train*len(sharding.SynthClasses))},
	}
	for _, c := range cases {
		code, _, stderr := runWorker(append(tiny, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, want 2 with %q:\n%s", c.name, code, c.want, stderr)
		}
	}
}

// --eval-batch 100000000 crashed with the runtime's out-of-memory error; it
// is cut to the validation set and the run ends well.
func TestHugeEvalBatchRuns(t *testing.T) {
	out := t.TempDir()
	code, stdout, stderr := runWorker("--standalone", "--variant", "tiny", "--epochs", "1", "--batch", "4", "--eval-batch", "100000000", "--data", data(t), "--out", out)
	if code != 0 || !strings.Contains(stdout, "Epoch 1/1") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, configs.BestFile)); err != nil {
		t.Error(err)
	}
}

// Fine-tuning's inputs: a missing --init file and an unknown --freeze are bad
// input; a joined worker refuses both, which are the job's.
func TestFineTuneFlagsExit2(t *testing.T) {
	d := data(t)
	tiny := []string{"--standalone", "--variant", "tiny", "--epochs", "1", "--batch", "4", "--data", d, "--out", t.TempDir()}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"missing init", append(tiny, "--init", filepath.Join(d, "nope.pth")), "worker: --init (rank 0): "},
		{"unknown freeze", append(tiny, "--freeze", "classifier"), "--freeze: alexnet: freeze \"classifier\": want none or features"},
		{"joined init", []string{"--join", "127.0.0.1:1", "--init", "x.pth"}, "--init is the job's setting"},
		{"joined freeze", []string{"--join", "127.0.0.1:1", "--freeze", "features"}, "--freeze is the job's setting"},
		{"unknown normalize", append(tiny, "--normalize", "ImageNet"), "--normalize: \"ImageNet\", want seed or imagenet"},
		{"joined normalize", []string{"--join", "127.0.0.1:1", "--normalize", "imagenet"}, "--normalize is the job's setting"},
	} {
		code, _, stderr := runWorker(c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, want 2 with %q:\n%s", c.name, code, c.want, stderr)
		}
	}
}
