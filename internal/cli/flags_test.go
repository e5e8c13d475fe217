package cli

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestEnvironmentSetsUnsetFlags(t *testing.T) {
	t.Setenv("ALEXRING_WAIT_TIMEOUT", "7")
	t.Setenv("ALEXRING_NAME", "from-env")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	wait := fs.Int("wait-timeout", 1, "")
	name := fs.String("name", "default", "")
	if done, _ := Parse(fs, []string{"--name", "from-flag"}); done {
		t.Fatal("parse stopped")
	}
	if *wait != 7 || *name != "from-flag" {
		t.Errorf("wait %d name %q: the environment sets unset flags only", *wait, *name)
	}
	t.Setenv("ALEXRING_WAIT_TIMEOUT", "soon")
	fs = flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Int("wait-timeout", 1, "")
	if done, code := Parse(fs, nil); !done || code != 2 {
		t.Errorf("a bad environment value: done %v code %d", done, code)
	}
}

func TestPrintErrorNamesTheCommandOnce(t *testing.T) {
	var b strings.Builder
	PrintError(&b, "worker", errors.New("worker: the coordinator stopped the job"))
	PrintError(&b, "worker", errors.New("sharding: open x: no such file"))
	if want := "worker: the coordinator stopped the job\nworker: sharding: open x: no such file\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
