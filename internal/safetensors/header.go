// Package safetensors reads the header of a safetensors file alone: its
// metadata and where its tensors lie, without their bytes. The coordinator
// learns what a training state has trained from it (configs.ReadProgress),
// where the whole state (parameters and Adam's moments) is hundreds of
// megabytes it has no use for. The model's reader and writer of the whole
// format are alexnet's (alexnet/safetensors.go), which reads the header
// through this package.
//
// The format: an 8-byte little-endian header length, a JSON header mapping
// names to {dtype, shape, data_offsets} (plus an optional "__metadata__" of
// strings), then the tensors' bytes.
package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrBad marks a file that is not a well-formed safetensors header.
var ErrBad = errors.New("bad safetensors file")

// MaxHeader bounds the JSON header (as alexnet's reader does), so that a
// foreign file cannot make us allocate gigabytes before we notice it is
// foreign.
const MaxHeader = 100 << 20

// Tensor is one header entry: its dtype, shape and byte range in the data.
type Tensor struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// Header is a file's header: its metadata (never nil), its tensors by name,
// and the length of the data that follows it.
type Header struct {
	Metadata  map[string]string
	Tensors   map[string]Tensor
	DataBytes int64
}

// ReadHeader reads the header of the file at path. The header length is
// checked against the file's size before anything is allocated, and every
// tensor's range against the data that follows; errors name the file.
func ReadHeader(path string) (*Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // names the file
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrBad)
	}
	size := st.Size()
	var first [8]byte
	if _, err := io.ReadFull(f, first[:]); err != nil {
		if size >= 8 {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return nil, fmt.Errorf("%s: %w: %d bytes, shorter than the 8-byte header length", path, ErrBad, size)
	}
	n, err := HeaderLen(first[:], size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	header := make([]byte, n)
	if _, err := io.ReadFull(f, header); err != nil {
		return nil, fmt.Errorf("%s: %w (changed while read?)", path, err)
	}
	h, err := ParseHeader(header, size-8-int64(n))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}

// Parse is ReadHeader of a whole file's bytes.
func Parse(data []byte) (*Header, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the 8-byte header length", ErrBad, len(data))
	}
	n, err := HeaderLen(data, int64(len(data)))
	if err != nil {
		return nil, err
	}
	return ParseHeader(data[8:8+n], int64(len(data))-8-int64(n))
}

// HeaderLen reads the header length from the first 8 bytes of a file of size
// bytes.
func HeaderLen(first []byte, size int64) (int, error) {
	n := binary.LittleEndian.Uint64(first)
	if n > MaxHeader || n > uint64(size-8) {
		return 0, fmt.Errorf("%w: header length %d does not fit a %d-byte file (truncated or not safetensors)", ErrBad, n, size)
	}
	return int(n), nil
}

// ParseHeader decodes the JSON header of a file with dataBytes bytes after
// it: every tensor's range within the data. alexnet's whole reader checks the
// rest (dtypes, shapes, that the tensors tile the data) over it.
func ParseHeader(header []byte, dataBytes int64) (*Header, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(header, &raw); err != nil {
		return nil, fmt.Errorf("%w: header is not JSON: %v", ErrBad, err)
	}
	h := &Header{Metadata: map[string]string{}, Tensors: make(map[string]Tensor, len(raw)), DataBytes: dataBytes}
	for name, msg := range raw {
		if name == "__metadata__" {
			var md map[string]string
			if err := json.Unmarshal(msg, &md); err != nil {
				return nil, fmt.Errorf("%w: __metadata__ is not a map of strings: %v", ErrBad, err)
			}
			if md != nil { // "__metadata__": null is none
				h.Metadata = md
			}
			continue
		}
		var t Tensor
		if err := json.Unmarshal(msg, &t); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrBad, name, err)
		}
		if b, e := t.Offsets[0], t.Offsets[1]; b < 0 || e < b || e > dataBytes {
			return nil, fmt.Errorf("%w: tensor %q has offsets [%d, %d] outside the %d data bytes (truncated?)", ErrBad, name, b, e, dataBytes)
		}
		h.Tensors[name] = t
	}
	return h, nil
}
