package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The Slurm batch script, without Slurm: fake scontrol and srun (srun starts
// the task command once per task on this machine, as Slurm would on the
// nodes) and fake coordinator and worker binaries that record their
// arguments. deploy/slurm/test.sh runs the same script on a real Slurm.
// This checks what the script hands each process: names from the task id,
// --gpu from the task's GPU, addresses, ports, the job id and the security
// flags, all of them flags the real commands define.

// fakeSlurm writes the fakes into a folder and returns the environment that
// runs the script against them, recording into rec.
func fakeSlurm(t *testing.T, node string, tasks int) (env []string, rec string) {
	t.Helper()
	dir := t.TempDir()
	rec = filepath.Join(dir, "rec")
	bin := filepath.Join(dir, "bin")
	for _, d := range []string{rec, bin, filepath.Join(dir, "path")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	scripts := map[string]string{
		// scontrol show hostnames LIST: the job's one node.
		"path/scontrol": `echo "$FAKE_NODE"`,
		// srun [options] COMMAND...: the options are recorded, the command
		// runs once per task with the task's variables.
		"path/srun": `opts=()
while [[ $1 == --* ]]; do opts+=("$1"); shift; done
printf '%s\n' "${opts[@]}" >"$FAKE_REC/srun"
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURMD_NODENAME=$FAKE_NODE "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"`,
		"bin/coordinator": `printf '%s\n' "$@" >"$FAKE_REC/coordinator"; echo "GOMAXPROCS=${GOMAXPROCS:-}" >>"$FAKE_REC/coordinator.env"; exit "${FAKE_COORDINATOR_EXIT:-0}"`,
		"bin/worker":      `printf '%s\n' "$@" >"$FAKE_REC/worker-$SLURM_PROCID"; echo "GOMAXPROCS=$GOMAXPROCS" >"$FAKE_REC/worker-$SLURM_PROCID.env"`,
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/usr/bin/env bash\nset -euo pipefail\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env = []string{
		"PATH=" + filepath.Join(dir, "path") + ":" + os.Getenv("PATH"),
		"HOME=" + dir,
		"FAKE_NODE=" + node, "FAKE_REC=" + rec,
		"ALEXRING_BIN=" + bin,
		"SLURM_JOB_ID=42", "SLURM_JOB_NODELIST=" + node, "SLURM_SUBMIT_DIR=" + dir,
		"SLURM_NTASKS=" + itoa(int32(tasks)), "SLURM_CPUS_PER_TASK=3",
	}
	return env, rec
}

// runSbatch runs the script as the batch step would, with the coordinator's
// arguments args.
func runSbatch(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{"slurm/alexring.sbatch"}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// argsOf reads the arguments a fake recorded, one per line.
func argsOf(t *testing.T, rec, name string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(rec, name))
	if err != nil {
		t.Fatalf("%s was not started: %v", name, err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// value is the argument after flag name in args ("" when absent).
func value(args []string, name string) string {
	i := slices.Index(args, "--"+name)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

// checkFlags fails for an argument that names no flag of the real command.
func checkFlags(t *testing.T, who string, args []string, flags map[string]bool) {
	t.Helper()
	for _, a := range args {
		if m := regexp.MustCompile(`^--?([a-z][a-z0-9-]*)`).FindStringSubmatch(a); m != nil && !flags[m[1]] {
			t.Errorf("%s is given %s, which it does not define", who, a)
		}
	}
}

func TestSlurmScript(t *testing.T) {
	if _, err := exec.LookPath("getent"); err != nil {
		t.Skip("no getent here to resolve node names")
	}
	bins := t.TempDir()
	build := exec.Command("go", "build", "-o", bins+string(os.PathSeparator), "github.com/alexring/alexring/cmd/coordinator", "github.com/alexring/alexring/cmd/worker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the commands: %v\n%s", err, out)
	}
	flags := map[string]map[string]bool{
		"coordinator": flagsOf(t, filepath.Join(bins, "coordinator")),
		"worker":      flagsOf(t, filepath.Join(bins, "worker")),
	}

	t.Run("cpu on loopback", func(t *testing.T) {
		env, rec := fakeSlurm(t, "localhost", 2)
		env = append(env, "DEVICE=cpu", "GOSSIP_PORT=31000")
		if out, err := runSbatch(t, env, "--config", "tiny", "--out", "/shared/out"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c := argsOf(t, rec, "coordinator")
		checkFlags(t, "coordinator", c, flags["coordinator"])
		for flag, want := range map[string]string{"workers": "2", "bind": "127.0.0.1:31000", "control": "127.0.0.1:31001", "job-id": "slurm-42", "config": "tiny", "out": "/shared/out"} {
			if got := value(c, flag); got != want {
				t.Errorf("coordinator --%s %q, want %q (args %q)", flag, got, want, c)
			}
		}
		if slices.Contains(c, "--insecure") || slices.Contains(c, "--tls-ca") {
			t.Errorf("coordinator on loopback got security flags: %q", c)
		}
		for k := range 2 {
			w := argsOf(t, rec, "worker-"+itoa(int32(k)))
			checkFlags(t, "worker", w, flags["worker"])
			for flag, want := range map[string]string{"name": "worker-000" + itoa(int32(k)), "gpu": "-1", "join": "127.0.0.1:31000", "job": "slurm-42", "bind": "127.0.0.1:0", "ring-addr": "127.0.0.1:0"} {
				if got := value(w, flag); got != want {
					t.Errorf("worker %d --%s %q, want %q (args %q)", k, flag, got, want, w)
				}
			}
			if env := argsOf(t, rec, "worker-"+itoa(int32(k))+".env"); env[0] != "GOMAXPROCS=3" {
				t.Errorf("worker %d runs with %s, want the task's 3 CPUs", k, env[0])
			}
		}
		s := argsOf(t, rec, "srun")
		for _, want := range []string{"--kill-on-bad-exit=0", "--cpus-per-task=3", "--ntasks=2"} {
			if !slices.Contains(s, want) {
				t.Errorf("srun not given %s: %q", want, s)
			}
		}
	})

	t.Run("gpu", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			env  []string
			want []string // --gpu of task 0, 1
		}{
			{"DEVICE=gpu, each task sees every GPU of the node", []string{"DEVICE=gpu"}, []string{"0", "1"}},
			{"auto: Slurm gave the job GPUs", []string{"SLURM_GPUS_ON_NODE=2"}, []string{"0", "1"}},
			{"auto: no GPUs", nil, []string{"-1", "-1"}},
			{"each task bound to its own GPU", []string{"DEVICE=gpu", "CUDA_VISIBLE_DEVICES=3"}, []string{"0", "0"}},
		} {
			env, rec := fakeSlurm(t, "localhost", 2)
			if out, err := runSbatch(t, append(env, tc.env...)); err != nil {
				t.Fatalf("%s: %v\n%s", tc.name, err, out)
			}
			for k, want := range tc.want {
				if got := value(argsOf(t, rec, "worker-"+itoa(int32(k))), "gpu"); got != want {
					t.Errorf("%s: task %d --gpu %s, want %s", tc.name, k, got, want)
				}
			}
		}
	})

	t.Run("beyond loopback", func(t *testing.T) {
		// A node name that resolves to an address off loopback: an IP is its
		// own name for getent.
		const node = "10.11.12.13"
		env, rec := fakeSlurm(t, node, 2)
		out, err := runSbatch(t, env)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(out, "is not on loopback") {
			t.Errorf("without the security files: %v, want exit 2 saying why\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(rec, "coordinator")); err == nil {
			t.Error("the coordinator was started without the security files")
		}

		env, rec = fakeSlurm(t, node, 2)
		sec := map[string]string{"cluster-key-file": "/s/cluster.key", "tls-cert": "/s/tls.crt", "tls-key": "/s/tls.key", "tls-ca": "/s/ca.crt"}
		for f, v := range sec {
			env = append(env, "ALEXRING_"+strings.ToUpper(strings.ReplaceAll(f, "-", "_"))+"="+v)
		}
		if out, err := runSbatch(t, env); err != nil {
			t.Fatalf("with the security files: %v\n%s", err, out)
		}
		for _, who := range []string{"coordinator", "worker-0", "worker-1"} {
			args := argsOf(t, rec, who)
			for f, v := range sec {
				if got := value(args, f); got != v {
					t.Errorf("%s --%s %q, want %q", who, f, got, v)
				}
			}
		}
		if got := value(argsOf(t, rec, "worker-1"), "bind"); got != node+":0" {
			t.Errorf("worker --bind %s, want %s:0", got, node)
		}

		env, rec = fakeSlurm(t, node, 1)
		out, err = runSbatch(t, append(env, "ALEXRING_INSECURE=true"))
		if err != nil || !strings.Contains(out, "WARNING: --insecure") {
			t.Errorf("ALEXRING_INSECURE=true: %v, want a run with a warning\n%s", err, out)
		}
		for _, who := range []string{"coordinator", "worker-0"} {
			if !slices.Contains(argsOf(t, rec, who), "--insecure") {
				t.Errorf("%s not given --insecure", who)
			}
		}
	})

	t.Run("the coordinator's status is the job's", func(t *testing.T) {
		env, _ := fakeSlurm(t, "localhost", 1)
		out, err := runSbatch(t, append(env, "FAKE_COORDINATOR_EXIT=3"))
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(out, "the coordinator failed (exit 3)") {
			t.Errorf("got %v, want exit 3\n%s", err, out)
		}
	})
}
