package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"gopkg.in/yaml.v3"
)

// Load reads a YAML job file (a path, or a built-in config's name: Read)
// over the defaults; unknown keys are errors that name the file. Its errors
// are bad input (ErrBadInput).
func Load(name string) (Job, error) {
	data, source, err := Read(name)
	if err != nil {
		return DefaultJob(), BadInput(fmt.Errorf("--config: %w", err))
	}
	return Parse(data, source)
}

// Parse decodes a job file's bytes over the defaults; source names it in
// errors.
func Parse(data []byte, source string) (Job, error) {
	job := DefaultJob()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&job); err != nil && !errors.Is(err, io.EOF) {
		return job, BadInput(fmt.Errorf("--config %s: %w", source, err))
	}
	return job, nil
}
