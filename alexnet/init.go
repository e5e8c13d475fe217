package alexnet

import (
	"fmt"
	"slices"
	"strings"
)

// InitReport is what InitFrom took from a file and what it drew.
type InitReport struct {
	// Loaded are the model's tensors taken from the file, in layout order.
	Loaded []string
	// Reinit are the model's tensors the file lacks or holds in another
	// shape (the last layer for another number of classes), drawn as Init
	// draws them, each with the reason ("classifier.6.weight: [1000 4096] in
	// the file, [5 4096] here").
	Reinit []string
	// Ignored are the file's tensors that the model has no name for.
	Ignored []string
}

// ReinitNames are the names of the re-initialised tensors.
func (r InitReport) ReinitNames() []string {
	names := make([]string, len(r.Reinit))
	for i, s := range r.Reinit {
		names[i], _, _ = strings.Cut(s, ":")
	}
	return names
}

// InitFrom initialises p for fine-tuning from a state_dict (safetensors, or
// PyTorch's .pth/.pt; ReadStateDict): every tensor is drawn as Init(seed)
// draws it, then each one the file holds under the same name and shape is
// replaced by the file's values. The draws are the seed's, so the tensors
// left to them are the same on every rank. A file with none of the model's
// tensors, or one of them in another type than float32, is an error.
func (p *Params) InitFrom(path string, seed uint64) (InitReport, error) {
	names, tensors, err := ReadStateDict(path)
	if err != nil {
		return InitReport{}, err
	}
	p.Init(seed)
	var r InitReport
	known := make(map[string]bool, len(p.Layout))
	for _, t := range p.Layout {
		known[t.Name] = true
		st, ok := tensors[t.Name]
		switch {
		case !ok:
			r.Reinit = append(r.Reinit, t.Name+": not in the file")
			continue
		case !slices.Equal(st.Shape, t.Shape):
			r.Reinit = append(r.Reinit, fmt.Sprintf("%s: %v in the file, %v here", t.Name, st.Shape, t.Shape))
			continue
		case st.DType != "F32":
			return InitReport{}, fmt.Errorf("alexnet: %s: tensor %s is %s; want float32 (F32)", path, t.Name, st.DType)
		case len(st.Data) != 4*t.Size:
			return InitReport{}, fmt.Errorf("alexnet: %s: tensor %s has %d bytes for %d floats", path, t.Name, len(st.Data), t.Size)
		}
		decodeF32(p.Flat[t.Offset:t.Offset+t.Size], st.Data)
		r.Loaded = append(r.Loaded, t.Name)
	}
	for _, n := range names {
		if !known[n] {
			r.Ignored = append(r.Ignored, n)
		}
	}
	if len(r.Loaded) == 0 {
		return r, fmt.Errorf("alexnet: %s holds none of the %s model's %d tensors by name and shape (it has %d: %v); is it the state_dict of this variant?",
			path, p.Spec.Variant, len(p.Layout), len(names), head(names, 4))
	}
	return r, nil
}

// head is the first n of names, for an error message.
func head(names []string, n int) []string {
	if len(names) > n {
		return append(slices.Clip(names[:n]), "...")
	}
	return names
}
