package coordinator

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/alexring/alexring/configs"
)

// The job's settings: the file's over the defaults (demo without --data,
// flowers' with it), and over them each job flag that was given, and only
// those.
func TestCommandJobPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "job.yaml")
	writeFile(t, file, "variant: tiny\nepochs: 3\nbatch: 8\nlr: 0.01\nout: from-file\n")
	demo, err := configs.Load("demo")
	if err != nil {
		t.Fatal(err)
	}
	flowers, err := configs.Load("flowers")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		file    string
		flags   configs.Job
		given   []string
		want    func(j *configs.Job) // applied to wantOf
		wantOf  configs.Job
		wantErr bool
	}{
		{name: "no file, no data: demo", wantOf: demo, want: func(j *configs.Job) { j.Data = "" }},
		{name: "no file, data: flowers' settings", flags: configs.Job{Data: "/d"}, given: []string{"data"}, wantOf: flowers,
			want: func(j *configs.Job) { j.Data = "/d" }},
		{name: "the file alone", file: file, wantOf: configs.DefaultJob(),
			want: func(j *configs.Job) { j.Variant, j.Epochs, j.Batch, j.LR, j.Out = "tiny", 3, 8, 0.01, "from-file" }},
		{name: "a flag given wins over the file", file: file, flags: configs.Job{Epochs: 5, Out: "o"}, given: []string{"epochs", "out"}, wantOf: configs.DefaultJob(),
			want: func(j *configs.Job) { j.Variant, j.Epochs, j.Batch, j.LR, j.Out = "tiny", 5, 8, 0.01, "o" }},
		{name: "a flag not given does not", file: file, flags: configs.Job{Epochs: 5, Batch: 64}, given: []string{"batch"}, wantOf: configs.DefaultJob(),
			want: func(j *configs.Job) { j.Variant, j.Epochs, j.Batch, j.LR, j.Out = "tiny", 3, 64, 0.01, "from-file" }},
		{name: "every job flag", file: "demo",
			flags: configs.Job{Data: "/d", Out: "o", Epochs: 2, Batch: 4, LR: 0.5, Seed: 9, Variant: "full", Init: "i.pth", Freeze: "features", SaveFormat: "pth", Normalize: "imagenet"},
			given: []string{"data", "out", "epochs", "batch", "lr", "seed", "variant", "init", "freeze", "save-format", "normalize"}, wantOf: demo,
			want: func(j *configs.Job) {
				j.Data, j.Out, j.Epochs, j.Batch, j.LR, j.Seed, j.Variant, j.Init, j.Freeze, j.SaveFormat, j.Normalize = "/d", "o", 2, 4, 0.5, 9, "full", "i.pth", "features", "pth", "imagenet"
			}},
		{name: "a missing file is bad input", file: filepath.Join(t.TempDir(), "nope.yaml"), wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			given := map[string]string{}
			for _, g := range c.given {
				given[g] = "--" + g
			}
			got, err := Command{ConfigFile: c.file, JobFlags: c.flags, Given: given}.Job()
			if c.wantErr {
				if !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "--config") {
					t.Fatalf("err %v, want bad input naming --config", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := c.wantOf
			c.want(&want)
			if got != want {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

// The command's checks before any data or port: each refusal is bad input
// naming its flag; --local without --bind takes a free gossip port;
// --auto-resume resumes only where --out holds a state.
func TestCommandPrepare(t *testing.T) {
	out := t.TempDir()
	base := func() Command {
		return Command{Config: Config{Workers: 2, Bind: "127.0.0.1:0", Control: "127.0.0.1:0"}, ConfigFile: "tiny",
			JobFlags: configs.Job{Out: out}, Given: map[string]string{"out": "--out"}, MaxRestarts: 3}
	}
	for _, c := range []struct {
		name string
		edit func(*Command)
		want string
	}{
		{"no workers", func(c *Command) { c.Workers = 0 }, "--workers 0"},
		{"gpus without local", func(c *Command) { c.GPUs = "0,1" }, "--gpus 0,1 chooses the devices of --local workers"},
		{"gpus for other workers", func(c *Command) { c.Local, c.GPUs = true, "0" }, "--gpus 0 names 1 devices for --workers 2"},
		{"negative restarts", func(c *Command) { c.MaxRestarts = -1 }, "--max-restarts -1"},
		{"local init missing", func(c *Command) {
			c.Local, c.JobFlags.Init, c.Given["init"] = true, filepath.Join(out, "nope.pth"), "--init"
		}, "--init: "},
		{"bad config", func(c *Command) { c.ConfigFile = "nope" }, "--config"},
	} {
		cmd := base()
		c.edit(&cmd)
		_, _, err := cmd.prepare(zap.NewNop())
		if !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want bad input with %q", c.name, err, c.want)
		}
	}

	cmd := base()
	cmd.Local, cmd.Bind, cmd.AutoResume = true, "127.0.0.1:7946", true
	cmd.LocalMemory = func(configs.Job, int, int, int) error { return nil }
	c, gpus, err := cmd.prepare(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if c.Bind != "127.0.0.1:0" || gpus != nil || c.Resume || c.LocalMemory == nil || c.Job.Data != "" || c.Job.Out != out {
		t.Errorf("--local, no --bind, nothing to resume: bind %s gpus %v resume %v local memory checked %v data %q out %q",
			c.Bind, gpus, c.Resume, c.LocalMemory != nil, c.Job.Data, c.Job.Out)
	}
	writeFile(t, filepath.Join(out, configs.StateFile), "x")
	cmd.Given["bind"] = "--bind"
	cmd.Bind, cmd.GPUs = "127.0.0.1:0", "0,1"
	if c, gpus, err = cmd.prepare(zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if !c.Resume || !slices.Equal(gpus, []int{0, 1}) || c.LocalMemory != nil {
		t.Errorf("--auto-resume with a state, --gpus: resume %v gpus %v local memory checked %v", c.Resume, gpus, c.LocalMemory != nil)
	}
}

// A command that cannot start returns before it binds or generates anything:
// bad input, which the command exits 2 on.
func TestRunCommandBadInput(t *testing.T) {
	cmd := Command{Config: Config{Workers: 1, Bind: "127.0.0.1:0", Control: "127.0.0.1:0"}, ConfigFile: "tiny",
		JobFlags: configs.Job{Batch: -1, Out: t.TempDir()}, Given: map[string]string{"batch": "--batch", "out": "--out"}}
	err := RunCommand(context.Background(), cmd, zap.NewNop())
	if !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "batch") {
		t.Errorf("err %v, want bad input naming the batch", err)
	}
}

// The local workers inherit this process's environment but for the job's
// flags' variables (the job carries them, a joined worker refuses them) and
// the coordinator's --metrics-addr.
func TestLocalWorkerEnv(t *testing.T) {
	env := []string{"PATH=/bin", "ALEXRING_EPOCHS=3", "ALEXRING_SAVE_FORMAT=pth", "ALEXRING_METRICS_ADDR=:9", "ALEXRING_DEBUG=true",
		"ALEXRING_LOADER_GOROUTINES=2", "ALEXRING_EPOCHS_X=1", "GOGC=50"}
	got := workerEnv(env)
	want := []string{"PATH=/bin", "ALEXRING_DEBUG=true", "ALEXRING_LOADER_GOROUTINES=2", "ALEXRING_EPOCHS_X=1", "GOGC=50"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
