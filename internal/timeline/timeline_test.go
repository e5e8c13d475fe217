package timeline

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type traceEvent struct {
	Name string         `json:"name"`
	Ph   string         `json:"ph"`
	TS   int64          `json:"ts"`
	Dur  int64          `json:"dur"`
	PID  int            `json:"pid"`
	TID  int            `json:"tid"`
	Args map[string]any `json:"args"`
}

func TestTraceIsAChromeEventArray(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.json")
	w, err := Create(path, 3, "rank 3")
	if err != nil {
		t.Fatal(err)
	}
	w.NameThread(0, "step")
	start := time.Unix(1700000000, 5000)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Span("forward", "compute", 0, start.Add(time.Duration(i)*time.Millisecond), 2*time.Millisecond, map[string]any{"step": i})
		}()
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var events []traceEvent
	if err := json.Unmarshal(b, &events); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, b)
	}
	if len(events) != 10 {
		t.Fatalf("%d events, want 2 metadata + 8 spans", len(events))
	}
	if e := events[0]; e.Ph != "M" || e.Name != "process_name" || e.PID != 3 || e.Args["name"] != "rank 3" {
		t.Errorf("process name event %+v", e)
	}
	for _, e := range events[2:] {
		if e.Ph != "X" || e.Name != "forward" || e.Dur != 2000 || e.PID != 3 || e.TS < start.UnixMicro() {
			t.Errorf("span %+v", e)
		}
	}
}

func TestCrashedTraceLacksOnlyTheBracket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.json")
	w, err := Create(path, 0, "rank 0")
	if err != nil {
		t.Fatal(err)
	}
	w.Span("data wait", "data", 0, time.Now(), time.Millisecond, nil)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path) // as a crash would leave it
	var events []traceEvent
	if err := json.Unmarshal(append(b, ']'), &events); err != nil || len(events) != 2 {
		t.Errorf("flushed trace plus ] does not parse: %v %q", err, b)
	}
	w.Close()
}

func TestNilWriterRecordsNothing(t *testing.T) {
	var w *Writer
	w.Span("x", "", 0, time.Now(), 0, nil)
	w.NameThread(0, "x")
	if w.Flush() != nil || w.Close() != nil {
		t.Error("a nil writer reported an error")
	}
}

func TestUnwritablePathNamesIt(t *testing.T) {
	_, err := Create(filepath.Join(t.TempDir(), "no", "such", "dir", "t.json"), 0, "x")
	if err == nil || !strings.Contains(err.Error(), "t.json") {
		t.Errorf("error %v does not name the file", err)
	}
}
