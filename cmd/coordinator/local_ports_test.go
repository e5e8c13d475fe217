package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// waitForLog waits until p's JSON log has a line with msg, looking again
// after each write, and returns it.
func waitForLog(t *testing.T, p *proc, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	return waitForLogWhere(t, p, msg, nil, timeout)
}

// waitForLogWhere is waitForLog of the first line with msg that where takes
// (nil: any).
func waitForLogWhere(t *testing.T, p *proc, msg string, where func(map[string]any) bool, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		news := p.news()
		_, errs := p.output()
		for _, l := range logLines(errs, msg) {
			if where == nil || where(l) {
				return l
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			out, errs := p.output()
			t.Fatalf("exited (%v) before logging %q:\n%s\n%s", err, msg, out, errs)
		case <-deadline:
			out, errs := p.output()
			t.Fatalf("no %q within %v:\n%s\n%s", msg, timeout, out, errs)
		case <-news:
		}
	}
}

// Two --local jobs on one machine, neither given --bind or --control, each
// take free ports: the second starts while the first is listening, and both
// finish.
func TestTwoLocalJobsOnOneMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	data := dataset(t, 8, 2)
	job := func() *proc {
		return startProc(t, ctx, "coordinator", "--workers", "2", "--local", "--config", "tiny", "--epochs", "2",
			"--data", data, "--out", t.TempDir(), "--log-format", "json")
	}
	first := job()
	a := waitForLog(t, first, "waiting for workers", time.Minute)
	second := job()
	b := waitForLog(t, second, "waiting for workers", time.Minute)
	select {
	case err := <-first.done:
		first.done <- err
		t.Fatalf("the first job ended (%v) before the second listened: they did not overlap", err)
	default:
	}
	for _, k := range []string{"gossip", "control"} {
		if a[k] == b[k] || !strings.HasPrefix(a[k].(string), "127.0.0.1:") {
			t.Errorf("%s addresses %v and %v: want two free ports of 127.0.0.1", k, a[k], b[k])
		}
	}
	for i, p := range []*proc{first, second} {
		var err error
		select {
		case err = <-p.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		out, errs := p.output()
		if err != nil || !strings.Contains(out, "Epoch 2/2") {
			t.Errorf("job %d: %v\n%s\n%s", i+1, err, out, errs)
		}
	}
}

// An address given and taken fails at once, naming the flag and the address,
// before the demo data is generated; only a --local coordinator is told to
// leave --bind out (a plain one's default gossip port is a fixed one).
func TestTakenAddressFailsBeforeTheData(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		flag  string
		local bool
		hint  string
	}{
		{"--bind", true, "give another --bind, or leave it out with --local"},
		{"--bind", false, "give another --bind"},
		{"--control", true, "give another --control, or leave it out"},
	} {
		args := []string{"--workers", "1", tc.flag, busy.Addr().String(), "--out", t.TempDir(), "--log-format", "json"}
		if tc.local {
			args = append(args, "--local")
		}
		r := runBin(t, time.Minute, "coordinator", args...)
		code := 0
		if ee, ok := r.err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		what := fmt.Sprintf("%s taken (local %v)", tc.flag, tc.local)
		if want := tc.flag + " " + busy.Addr().String() + " is not free"; code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, tc.hint) {
			t.Errorf("%s: exit %d, want 1, %q and %q:\n%s", what, code, want, tc.hint, r.stderr)
		}
		if !tc.local && strings.Contains(r.stderr, "--local") {
			t.Errorf("%s: a plain coordinator is told about --local:\n%s", what, r.stderr)
		}
		if strings.Contains(r.stderr, "generated the synthetic demo dataset") {
			t.Errorf("%s: the demo data was generated first:\n%s", what, r.stderr)
		}
	}
}
