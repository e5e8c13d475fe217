package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestBarDrawsStepsRateAndTimeLeft(t *testing.T) {
	var out bytes.Buffer
	b := New(&out, "train epoch[1/10]", 10)
	clock := b.start
	b.now = func() time.Time { return clock }
	for i := 0; i < 4; i++ {
		clock = clock.Add(500 * time.Millisecond)
		b.Add(1, "loss=1.234")
	}
	got := b.Line("loss=1.234")
	want := "train epoch[1/10]  40%|████████            | 4/10 [00:02<00:03, 2.00it/s, loss=1.234]"
	if got != want {
		t.Errorf("line\n%q\nwant\n%q", got, want)
	}
	if strings.Count(out.String(), "\r") != 4 {
		t.Errorf("want one redraw per step 500 ms apart, got %q", out.String())
	}
	b.Done()
	if !strings.HasSuffix(out.String(), "\n") {
		t.Error("Done does not end the line")
	}
}

func TestBarRedrawsAtMostTenTimesASecondButAlwaysAtTheEnd(t *testing.T) {
	var out bytes.Buffer
	b := New(&out, "val", 1000)
	clock := b.start
	b.now = func() time.Time { return clock }
	for i := 0; i < 1000; i++ {
		clock = clock.Add(time.Millisecond)
		b.Add(1, "")
	}
	if n := strings.Count(out.String(), "\r"); n > 12 {
		t.Errorf("%d redraws in one second", n)
	}
	if !strings.Contains(out.String(), "1000/1000") {
		t.Error("the last step was not drawn")
	}
}

func TestNilBarIsSilent(t *testing.T) {
	b := New(nil, "x", 3)
	b.Add(1, "")
	b.Done()
	if b != nil {
		t.Fatal("a bar without a writer")
	}
}

func TestClockPastAnHour(t *testing.T) {
	if got := clock(3*time.Hour + 4*time.Minute + 5*time.Second); got != "3:04:05" {
		t.Errorf("clock %q", got)
	}
}
