package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alexring/alexring/internal/cli"
)

// A job setting comes from its flag, else its environment variable, else the
// job file (--config, which the environment can choose too), else the
// defaults: parsed as the command parses, in process.
func TestFlagPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(file, []byte("variant: tiny\nepochs: 3\nlr: 0.01\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		args       []string
		env        map[string]string
		epochs     int
		lr         float64
		variant    string
		configFrom string
	}{
		{"the file", []string{"--config", file}, nil, 3, 0.01, "tiny", "--config"},
		{"the environment over the file", []string{"--config", file}, map[string]string{"ALEXRING_EPOCHS": "4"}, 4, 0.01, "tiny", "--config"},
		{"the flag over the environment", []string{"--config", file, "--epochs", "5"}, map[string]string{"ALEXRING_EPOCHS": "4", "ALEXRING_LR": "0.5"}, 5, 0.5, "tiny", "--config"},
		{"the environment chooses the file", []string{"--variant", "full"}, map[string]string{"ALEXRING_CONFIG": file}, 3, 0.01, "full", "ALEXRING_CONFIG"},
		{"no file, no data: demo", nil, nil, 10, 0.0005, "tiny", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
			cmd, _ := flags(fs)
			given, done, _ := cli.ParseGiven(fs, c.args)
			if done {
				t.Fatal("parse stopped")
			}
			cmd.Given = given
			job, err := cmd.Job()
			if err != nil {
				t.Fatal(err)
			}
			if job.Epochs != c.epochs || job.LR != c.lr || job.Variant != c.variant || given["config"] != c.configFrom {
				t.Errorf("epochs %d lr %v variant %s, --config from %q; want %d %v %s from %q", job.Epochs, job.LR, job.Variant, given["config"], c.epochs, c.lr, c.variant, c.configFrom)
			}
		})
	}
}

// The command in process: bad flags and settings exit 2 before anything is
// bound or generated, naming the flag.
func TestFlagErrorsInProcess(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--workers", "two"}, "invalid value"},
		{[]string{"--workers", "0"}, "coordinator: --workers 0, want at least 1"},
		{[]string{"--config", "tiny", "--epochs", "0"}, "coordinator: --epochs 0, want at least 1"},
		{[]string{"--gpus", "0"}, "coordinator: --gpus 0 chooses the devices of --local workers"},
		{[]string{"--local", "--max-restarts", "-1"}, "coordinator: --max-restarts -1, want 0 or more"},
		{[]string{"--log-format", "xml"}, "coordinator: --log-format \"xml\""},
	} {
		var out, errb bytes.Buffer
		if code := run(c.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v: exit %d, want 2 with %q:\n%s", c.args, code, c.want, errb.String())
		}
	}
	if code := run([]string{"--help"}, io.Discard, io.Discard); code != 0 {
		t.Errorf("--help: exit %d", code)
	}
}
