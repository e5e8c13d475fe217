// Package atomicfile writes files so that a crash or kill at any moment leaves
// either the old file or the new one whole, never a torn one; Sweep removes
// the temporary files such a kill leaves behind.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// tempPrefix starts the name of Write's temporary file for name; os.CreateTemp
// ends it with decimal digits: ".state.safetensors.tmp-123456789".
func tempPrefix(name string) string { return "." + name + ".tmp-" }

// Write creates path through a temporary file in the same folder: write, flush,
// fsync, rename over path, fsync the folder. On any error the temporary file is
// removed and path is left as it was. The temporary file is locked (flock)
// from before it has its name until it is renamed, so that Sweep in another
// process leaves it alone, and removes it at once when its writer is dead.
func Write(path string, perm os.FileMode, write func(w io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	tmp, tmpName, err := createLocked(dir, tempPrefix(filepath.Base(path)))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	closed := false
	defer func() {
		if !closed {
			tmp.Close()
		}
		if err != nil {
			os.Remove(tmpName)
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err = write(bw); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if !renameOpen {
		closed = true
		if err = tmp.Close(); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	// Renamed while still open (and so locked) where the system allows it:
	// closing first would unlock a file that Sweep could then take for stale.
	if err = os.Rename(tmpName, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if !closed {
		closed = true
		if err := tmp.Close(); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	// The rename is durable only once the folder's entry is on disk.
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// stagingSuffix ends the name a temporary file has from its creation until
// its writer holds its lock: ".state.safetensors.tmp-123456789.new". Only
// then is it renamed to the name Sweep judges by its lock alone, so that an
// unlocked file of that name is never a live writer's.
const stagingSuffix = ".new"

// createLocked creates Write's temporary file in dir, named prefix and
// decimal digits, and locks it (best effort: where locks do not work, Sweep
// goes by age). Where an open file may be renamed, it is created under a
// staging name and renamed once locked.
func createLocked(dir, prefix string) (f *os.File, name string, err error) {
	if !renameOpen {
		f, err := os.CreateTemp(dir, prefix+"*")
		if err != nil {
			return nil, "", err
		}
		lock(f)
		return f, f.Name(), nil
	}
	for range 100 {
		f, err := os.CreateTemp(dir, prefix+"*"+stagingSuffix)
		if err != nil {
			return nil, "", err
		}
		lock(f)
		staged := f.Name()
		name := strings.TrimSuffix(staged, stagingSuffix)
		// os.CreateTemp made the staging name unique, not the final one: a
		// link fails rather than replace another writer's file.
		err = os.Link(staged, name)
		if err == nil {
			os.Remove(staged)
			return f, name, nil
		}
		if !os.IsExist(err) { // no hard links here: a rename, unique enough
			err = os.Rename(staged, name)
			if err == nil {
				return f, name, nil
			}
		}
		f.Close()
		os.Remove(staged)
		if !os.IsExist(err) {
			return nil, "", err
		}
	}
	return nil, "", fmt.Errorf("no free temporary name %s* in %s", prefix, dir)
}

// lockGrace is how young an unlocked staging file (stagingSuffix) may be and
// still belong to a live writer: one that has created it but not yet locked
// it. Where an open file cannot be renamed, it applies to the temporary file
// itself.
const lockGrace = 10 * time.Second

// unlockedAge is when a temporary file is stale where locks do not work (some
// network file systems): no write of ours takes an hour.
const unlockedAge = time.Hour

// Sweep removes from dir the temporary files that Write leaves for the given
// names when its process is killed mid-write (".<name>.tmp-<digits>", and
// the same ending in stagingSuffix) and nothing else. A file that a live process is still writing is locked by it,
// so two jobs sharing a folder do not remove each other's writes in progress.
// It returns the paths removed; a file it cannot judge is left.
func Sweep(dir string, names ...string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sweep %s: %w", dir, err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		staging := false
		if isTemp(e.Name(), names) {
			staging = !renameOpen // without the staging name, an unlocked file may be one not yet locked
		} else if base, ok := strings.CutSuffix(e.Name(), stagingSuffix); ok && isTemp(base, names) {
			staging = true
		} else {
			continue
		}
		path := filepath.Join(dir, e.Name())
		ok, err := removeIfStale(path, staging)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			removed = append(removed, path)
		}
	}
	return removed, errors.Join(errs...)
}

// isTemp says whether file is the name of Write's temporary file for one of
// names.
func isTemp(file string, names []string) bool {
	for _, n := range names {
		digits, ok := strings.CutPrefix(file, tempPrefix(n))
		if ok && digits != "" && strings.Trim(digits, "0123456789") == "" {
			return true
		}
	}
	return false
}

// removeIfStale removes path when no live process is writing it: its lock is
// free (and, for a staging file, which its writer may not have locked yet, it
// is older than lockGrace), or, without locks, it is older than unlockedAge.
func removeIfStale(path string, staging bool) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0) // write mode: NFS's emulated flock needs it
	if err != nil {
		if os.IsNotExist(err) {
			return false, nil // its writer finished meanwhile
		}
		return false, fmt.Errorf("sweep %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("sweep %s: %w", path, err)
	}
	age := time.Since(st.ModTime())
	switch tryLock(f) {
	case lockHeld:
		return false, nil
	case lockFree:
		if staging && age < lockGrace {
			return false, nil
		}
	default:
		if age < unlockedAge {
			return false, nil
		}
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return false, fmt.Errorf("sweep %s: %w", path, err)
	}
	return true, nil
}

// What tryLock found.
type lockState int

const (
	lockFree        lockState = iota // taken: no live process holds it
	lockHeld                         // another open file holds it: a live writer
	lockUnsupported                  // locks do not work here
)
