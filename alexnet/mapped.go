package alexnet

import (
	"encoding/binary"
	"fmt"
	"unsafe"
)

// OpenModel is LoadModel for a process that only reads the parameters, as
// predict does: a safetensors file is mapped (MapSafetensors), and when it
// holds the tensors in the layout's order, aligned (as SaveModel writes
// them), the parameters are the mapping itself, with no copy; close must
// then come after the last use of the parameters (after the backend's
// Close). Any other file (PyTorch's safetensors order, a .pth) is loaded as
// LoadModel does, and close does nothing.
func OpenModel(path string) (p *Params, meta ModelMeta, close func() error, err error) {
	nothing := func() error { return nil }
	f, err := MapSafetensors(path)
	if err != nil {
		// Not safetensors (a .pth checkpoint), or unreadable: LoadModel
		// decides, and words the error.
		p, meta, err = LoadModel(path)
		return p, meta, nothing, err
	}
	if p, meta, err = modelOf(f); err != nil {
		f.Close()
		return nil, ModelMeta{}, nothing, fmt.Errorf("%s: %w", path, err)
	}
	if !f.Mapped() || !f.holds(p.Flat) {
		// The parameters were copied out (or the file was read): the
		// mapping is not needed past here.
		if err := f.Close(); err != nil {
			return nil, ModelMeta{}, nothing, fmt.Errorf("%s: %w", path, err)
		}
		return p, meta, nothing, nil
	}
	return p, meta, func() error {
		if err := f.Close(); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	}, nil
}

// holds reports whether v lies in the file's body.
func (f *STFile) holds(v []float32) bool {
	if len(v) == 0 || len(f.body) == 0 {
		return false
	}
	start := uintptr(unsafe.Pointer(&f.body[0]))
	at := uintptr(unsafe.Pointer(&v[0]))
	return at >= start && at < start+uintptr(len(f.body))
}

// littleEndian: the file's float32 bytes are this machine's floats.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// mappedFlat is the flat parameter vector of layout as a view of a mapped
// file's body, when the file holds exactly those tensors back to back in
// layout order, 4-byte aligned, in this machine's byte order; else nil.
// Only a mapping is viewed so: a caller's buffer given to ParseModel stays
// the caller's.
func (f *STFile) mappedFlat(layout []Tensor) []float32 {
	if f.unmap == nil || !littleEndian || len(f.body) == 0 || len(f.body)%4 != 0 ||
		uintptr(unsafe.Pointer(&f.body[0]))%4 != 0 || len(f.Tensors) != len(layout) {
		return nil
	}
	n := len(f.body) / 4
	for _, t := range layout {
		st, ok := f.Tensors[t.Name]
		if !ok || t.Size == 0 || 4*(t.Offset+t.Size) > len(f.body) || len(st.Data) != 4*t.Size || &st.Data[0] != &f.body[4*t.Offset] {
			return nil
		}
		n -= t.Size
	}
	if n != 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&f.body[0])), len(f.body)/4)
}
