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

// ParseGiven says where each flag that was set came from; the default is no
// source.
func TestParseGivenNamesTheSource(t *testing.T) {
	t.Setenv("ALEXRING_EPOCHS", "3")
	t.Setenv("ALEXRING_BATCH", "4")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	epochs, batch := fs.Int("epochs", 1, ""), fs.Int("batch", 1, "")
	fs.Int("lr", 1, "")
	given, done, _ := ParseGiven(fs, []string{"--batch", "5"})
	if done {
		t.Fatal("parse stopped")
	}
	if want := map[string]string{"epochs": "ALEXRING_EPOCHS", "batch": "--batch"}; len(given) != 2 || given["epochs"] != want["epochs"] || given["batch"] != want["batch"] {
		t.Errorf("given %v, want %v", given, want)
	}
	if *epochs != 3 || *batch != 5 {
		t.Errorf("epochs %d batch %d", *epochs, *batch)
	}
}
