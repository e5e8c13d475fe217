// Package timeline writes a Chrome trace (the JSON array format that
// chrome://tracing and Perfetto open) of where a rank spends its time, as
// Horovod's timeline does: one complete event per phase of every step.
//
// Events are streamed to the file as they happen, so that the trace of a run
// that crashed is still there: the format allows the closing bracket to be
// missing for exactly that reason. Timestamps are wall-clock microseconds, so
// the files of several ranks line up when opened together.
package timeline

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// Writer appends events to one trace file. A nil *Writer records nothing, so
// that callers need no checks when the timeline is off. It is safe for
// concurrent use.
type Writer struct {
	mu     sync.Mutex
	path   string
	f      *os.File
	bw     *bufio.Writer
	pid    int
	events int
	err    error // the first write error, reported by Close
}

// event is one entry of the Trace Event Format.
type event struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	TS   int64          `json:"ts"` // microseconds
	Dur  int64          `json:"dur,omitempty"`
	PID  int            `json:"pid"`
	TID  int            `json:"tid"`
	Args map[string]any `json:"args,omitempty"`
}

// Create starts a trace at path for process pid (the rank), named process in
// the viewer.
func Create(path string, pid int, process string) (*Writer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("timeline: %w", err)
	}
	w := &Writer{path: path, f: f, bw: bufio.NewWriter(f), pid: pid}
	w.bw.WriteString("[\n")
	w.write(event{Name: "process_name", Ph: "M", PID: pid, Args: map[string]any{"name": process}})
	return w, nil
}

// Span records a phase that ran from start for dur on thread tid, with args
// shown when the event is selected.
func (w *Writer) Span(name, cat string, tid int, start time.Time, dur time.Duration, args map[string]any) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.write(event{Name: name, Cat: cat, Ph: "X", TS: start.UnixMicro(), Dur: max(dur.Microseconds(), 1), PID: w.pid, TID: tid, Args: args})
}

// NameProcess renames the process in the viewer (once its rank is known).
func (w *Writer) NameProcess(name string) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.write(event{Name: "process_name", Ph: "M", PID: w.pid, Args: map[string]any{"name": name}})
}

// NameThread labels thread tid in the viewer.
func (w *Writer) NameThread(tid int, name string) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.write(event{Name: "thread_name", Ph: "M", PID: w.pid, TID: tid, Args: map[string]any{"name": name}})
}

// Flush pushes buffered events to the file (once per epoch keeps a crash from
// losing more than an epoch's worth).
func (w *Writer) Flush() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.bw.Flush(); err != nil && w.err == nil {
		w.err = err
	}
	return w.wrap(w.err)
}

// Close ends the array and closes the file, reporting the first write error.
func (w *Writer) Close() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bw.WriteString("]\n")
	if err := w.bw.Flush(); err != nil && w.err == nil {
		w.err = err
	}
	if err := w.f.Close(); err != nil && w.err == nil {
		w.err = err
	}
	return w.wrap(w.err)
}

func (w *Writer) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("timeline %s: %w", w.path, err)
}

// write appends one event, a comma before all but the first. Called with mu held
// (or before the Writer is shared).
func (w *Writer) write(e event) {
	if w.err != nil {
		return
	}
	b, err := json.Marshal(e)
	if err != nil {
		w.err = err
		return
	}
	if w.events > 0 {
		w.bw.WriteString(",\n")
	}
	w.events++
	if _, err := w.bw.Write(b); err != nil {
		w.err = err
	}
}
