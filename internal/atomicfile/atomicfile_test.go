package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteReplacesWhole(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.bin")
	if err := Write(p, 0o644, func(w io.Writer) error { _, err := w.Write([]byte("old")); return err }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := Write(p, 0o644, func(w io.Writer) error {
		w.Write([]byte("half of the new"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("error %v, want boom", err)
	}
	got, _ := os.ReadFile(p)
	if string(got) != "old" {
		t.Fatalf("file holds %q after a failed write, want the old content", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	if err := Write(p, 0o644, func(w io.Writer) error { _, err := w.Write([]byte("new")); return err }); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != "new" {
		t.Fatalf("got %q", got)
	}
}

func TestWriteUnwritableFolder(t *testing.T) {
	err := Write(filepath.Join(t.TempDir(), "missing", "f"), 0o644, func(io.Writer) error { return nil })
	if err == nil {
		t.Fatal("write into a missing folder succeeded")
	}
}

// A kill mid-write leaves Write's temporary file: Sweep removes exactly those
// of the names given that no live writer holds, and nothing else.
func TestSweepRemovesOnlyStaleTemporaries(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-2 * time.Hour)
	touch := func(name string, mtime time.Time) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, mtime, mtime)
		return p
	}
	stale := []string{touch(".state.safetensors.tmp-123456", old), touch(".training.png.tmp-9", old), touch(".training.png.tmp-8.new", old)}
	if renameOpen {
		// Unlocked, so its writer is dead, however young: a live writer
		// locks the file before it has this name.
		stale = append(stale, touch(".state.safetensors.tmp-77", time.Now()))
	}
	kept := []string{
		touch(".state.safetensors.tmp-78.new", time.Now()), // its writer may not have locked it yet
		touch(".state.safetensors.tmp-79.old", old),
		touch("state.safetensors", old),
		touch(".state.safetensors.tmp-12ab", old), // not os.CreateTemp's digits
		touch(".state.safetensors.tmp-", old),
		touch("state.safetensors.tmp-1", old),
		touch(".notes.txt.tmp-1", old), // not one of the names
		touch(".x.state.safetensors.tmp-1", old),
	}
	os.Mkdir(filepath.Join(dir, ".best.safetensors.tmp-5"), 0o755)
	// A live writer's file: locked, however old it looks.
	busy := touch(".best.safetensors.tmp-42", old)
	f, err := os.OpenFile(busy, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lock(f)
	if tryLock(f) == lockUnsupported {
		t.Skip("no file locks here")
	}
	kept = append(kept, busy)

	removed, err := Sweep(dir, "state.safetensors", "best.safetensors", "training.png")
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != len(stale) {
		t.Errorf("removed %v, want %v", removed, stale)
	}
	for _, p := range stale {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there", p)
		}
	}
	for _, p := range append(kept, filepath.Join(dir, ".best.safetensors.tmp-5")) {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	f.Close() // the writer is gone: its file is stale now
	if removed, _ := Sweep(dir, "best.safetensors"); len(removed) != 1 || removed[0] != busy {
		t.Errorf("after the writer closed: removed %v, want %s", removed, busy)
	}
}

// Write holds its temporary file's lock until the rename, so a Sweep from
// another job sharing the folder never takes a write in progress for stale.
func TestSweepLeavesAWriteInProgress(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.safetensors")
	err := Write(p, 0o644, func(w io.Writer) error {
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			return fmt.Errorf("folder holds %v, want the temporary file", entries)
		}
		tmp := filepath.Join(dir, entries[0].Name())
		old := time.Now().Add(-2 * time.Hour) // as old as a stale one
		os.Chtimes(tmp, old, old)
		if removed, err := Sweep(dir, "state.safetensors"); len(removed) != 0 || err != nil {
			return fmt.Errorf("sweep during the write removed %v (%v)", removed, err)
		}
		_, err := w.Write([]byte("whole"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != "whole" {
		t.Errorf("got %q", got)
	}
}

// A writer killed a moment before its job's next coordinator sweeps --out
// leaves a temporary file a second old: Sweep removes it, since a live
// writer holds the lock of every file of that name (the file gets it under
// a staging name). It used to wait 10 s for an unlocked file, and left it.
func TestSweepRemovesAYoungDeadWrite(t *testing.T) {
	if !renameOpen {
		t.Skip("no staging name here")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "training.png")
	var tmp string
	err := Write(p, 0o644, func(w io.Writer) error {
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 || !isTemp(entries[0].Name(), []string{"training.png"}) {
			return fmt.Errorf("folder holds %v, want the temporary file", entries)
		}
		tmp = filepath.Join(dir, entries[0].Name())
		f, err := os.OpenFile(tmp, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if tryLock(f) != lockHeld {
			t.Skip("no file locks here")
		}
		return fmt.Errorf("killed")
	})
	if err == nil {
		t.Fatal("the write should fail")
	}
	// What a kill leaves: the file, young and unlocked.
	if err := os.WriteFile(tmp, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := Sweep(dir, "training.png")
	if err != nil || len(removed) != 1 || removed[0] != tmp {
		t.Errorf("Sweep removed %v (%v), want %s", removed, err, tmp)
	}
}
