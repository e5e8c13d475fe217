package worker

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/configs"
)

// A joined worker's own settings (its data folder, memory, cores and logs)
// win over the coordinator's job; those it leaves unset, and every setting of
// the job's own, are the coordinator's.
func TestJoinedWorkerOwnSettings(t *testing.T) {
	tj := newTestJob(t)
	tj.cfg.EvalBatch, tj.cfg.LoaderGoroutines = 8, 3
	mount := synthData(t, 4) // the same files at another mount point
	for _, c := range []struct {
		name                           string
		jc                             JoinConfig
		data                           string
		evalBatch, goroutines, stepLog int
	}{
		{"none set", JoinConfig{}, tj.cfg.Data, 8, 3, 0},
		{"all set", JoinConfig{Data: mount, EvalBatch: 2, LoaderGoroutines: 1, StepLog: 1}, mount, 2, 1, 1},
		{"some set", JoinConfig{LoaderGoroutines: 5}, tj.cfg.Data, 8, 5, 0},
	} {
		jc := c.jc
		jc.StartTimeout = tj.cfg.Ring.OpTimeout
		j := &job{jc: &jc, node: &allreduce.Node{Addr: "127.0.0.1:1"}, log: zap.NewNop()}
		if err := j.accept(tj.plan(t, 1, "127.0.0.1:1"), 0); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := j.cfg
		if got.Data != c.data || got.EvalBatch != c.evalBatch || got.LoaderGoroutines != c.goroutines || got.StepLog != c.stepLog {
			t.Errorf("%s: data %s eval batch %d goroutines %d step log %d; want %s %d %d %d", c.name,
				got.Data, got.EvalBatch, got.LoaderGoroutines, got.StepLog, c.data, c.evalBatch, c.goroutines, c.stepLog)
		}
		if got.Epochs != tj.cfg.Epochs || got.Seed != tj.cfg.Seed || got.LR != tj.cfg.LR || got.Variant != tj.cfg.Variant {
			t.Errorf("%s: the job's settings changed: %+v", c.name, got)
		}
	}
}

// A joined worker refuses the job's flags, and its own ones out of range,
// before it computes or joins anything.
func TestCommandChecksOwn(t *testing.T) {
	for _, c := range []struct {
		given map[string]string
		job   configs.Job
		want  string
	}{
		{map[string]string{"lr": "--lr"}, configs.Job{EvalBatch: 1}, "--lr is the job's setting"},
		{map[string]string{"dropout": "ALEXRING_DROPOUT"}, configs.Job{EvalBatch: 1}, "--dropout (from ALEXRING_DROPOUT) is the job's setting"},
		{map[string]string{"eval-batch": "--eval-batch"}, configs.Job{EvalBatch: 0}, "--eval-batch 0, want at least 1"},
		{nil, configs.Job{EvalBatch: 1, LoaderGoroutines: -1}, "--loader-goroutines -1"},
	} {
		err := RunCommand(t.Context(), Command{Job: c.job, Given: c.given, GPU: -1, CPUKernels: "nonesuch"}, zap.NewNop())
		if !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want bad input with %q", c.given, err, c.want)
		}
	}
}
