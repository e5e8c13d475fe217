// Package configs is a job's contract, shared by the coordinator and the
// workers, and imports neither (nor the model): the job's schema (Job), its
// defaults and checks (job.go), its YAML loading (load.go), the names of the
// files in its --out (files.go) and what a training state says of its
// progress, from the state's header alone (state.go). The plans carry a Job
// to the workers as typed settings (internal/cluster/controlpb).
//
// It also holds the job files shipped with alexring, embedded so that the
// binaries find them anywhere: flowers (the seed's training), demo (the
// built-in default) and tiny (tests).
package configs

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

//go:embed *.yaml
var files embed.FS

// Read resolves --config: an existing file, else the name of a built-in config
// ("demo" or "demo.yaml"). It returns the bytes and where they came from.
func Read(name string) ([]byte, string, error) {
	if data, err := os.ReadFile(name); err == nil {
		return data, name, nil
	} else if !os.IsNotExist(err) {
		return nil, name, fmt.Errorf("configs: %w", err)
	}
	base := strings.TrimSuffix(filepath.Base(name), ".yaml") + ".yaml"
	data, err := fs.ReadFile(files, base)
	if err != nil || strings.ContainsRune(name, os.PathSeparator) {
		return nil, name, fmt.Errorf("configs: no file %q and no built-in config of that name (built in: demo, flowers, tiny)", name)
	}
	return data, "built-in " + base, nil
}
