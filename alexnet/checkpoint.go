package alexnet

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Model files are safetensors with exactly the state_dict names, so that
// PyTorch's model.load_state_dict(safetensors.torch.load_file(path)) takes them;
// the metadata carries what PyTorch's state_dict does not.
const (
	metaVariant  = "variant"
	metaClasses  = "classes"      // JSON list of class names by index
	metaEpoch    = "epoch"        // 1-based epoch the parameters are from
	metaAccuracy = "val_accuracy" // validation accuracy at that epoch
	metaFormat   = "format"
	formatModel  = "alexring-model-1"
	formatState  = "alexring-train-state-1"
)

// ModelMeta is what a model file says about itself besides its tensors.
type ModelMeta struct {
	Variant     string
	Classes     []string // class names by index; empty when the file has none
	Epoch       int
	ValAccuracy float64
}

// SaveModel writes the parameters to path as safetensors (atomically).
func SaveModel(path string, p *Params, meta ModelMeta) error {
	if len(meta.Classes) > 0 && len(meta.Classes) != p.Spec.Classes {
		return fmt.Errorf("alexnet: save %s: %d class names for a %d-class model", path, len(meta.Classes), p.Spec.Classes)
	}
	md := map[string]string{
		metaFormat:   formatModel,
		metaVariant:  p.Spec.Variant,
		metaEpoch:    strconv.Itoa(meta.Epoch),
		metaAccuracy: strconv.FormatFloat(meta.ValAccuracy, 'g', -1, 64),
	}
	if len(meta.Classes) > 0 {
		js, _ := json.Marshal(meta.Classes)
		md[metaClasses] = string(js)
	}
	names, tensors := paramTensors(p)
	return WriteSafetensors(path, names, tensors, md)
}

func paramTensors(p *Params) ([]string, map[string]STTensor) {
	names := make([]string, len(p.Layout))
	tensors := make(map[string]STTensor, len(p.Layout))
	for i, t := range p.Layout {
		names[i] = t.Name
		tensors[names[i]] = F32Tensor(p.Flat[t.Offset:t.Offset+t.Size], t.Shape...)
	}
	return names, tensors
}

// LoadModel reads a model file. The spec comes from the file: its "variant"
// metadata when present, else the variant whose shapes it matches (a state_dict
// saved by PyTorch has no metadata); the class count from classifier.6.bias.
// Every tensor's name, dtype and shape is checked, and nothing extra is allowed.
func LoadModel(path string) (*Params, ModelMeta, error) {
	f, err := ReadSafetensors(path)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	meta, err := modelMeta(f.Metadata)
	if err != nil {
		return nil, ModelMeta{}, fmt.Errorf("%s: %w", path, err)
	}
	spec, err := specOf(f, meta.Variant)
	if err != nil {
		return nil, ModelMeta{}, fmt.Errorf("%s: %w", path, err)
	}
	if len(meta.Classes) > 0 && len(meta.Classes) != spec.Classes {
		return nil, ModelMeta{}, fmt.Errorf("%s: metadata names %d classes, classifier.6.bias has %d", path, len(meta.Classes), spec.Classes)
	}
	meta.Variant = spec.Variant
	p := NewParams(spec)
	if err := fillParams(f, p, true); err != nil {
		return nil, ModelMeta{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, meta, nil
}

func modelMeta(md map[string]string) (ModelMeta, error) {
	m := ModelMeta{Variant: md[metaVariant]}
	if s, ok := md[metaClasses]; ok {
		if err := json.Unmarshal([]byte(s), &m.Classes); err != nil {
			return m, fmt.Errorf("metadata %q is not a JSON list of names: %v", metaClasses, err)
		}
	}
	if s, ok := md[metaEpoch]; ok {
		e, err := strconv.Atoi(s)
		if err != nil {
			return m, fmt.Errorf("metadata %q = %q is not a number", metaEpoch, s)
		}
		m.Epoch = e
	}
	if s, ok := md[metaAccuracy]; ok {
		a, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return m, fmt.Errorf("metadata %q = %q is not a number", metaAccuracy, s)
		}
		m.ValAccuracy = a
	}
	return m, nil
}

// specOf finds the spec of the stored parameters.
func specOf(f *STFile, variant string) (Spec, error) {
	last, ok := f.Tensors["classifier.6.bias"]
	if !ok {
		return Spec{}, fmt.Errorf("no tensor %q: not an AlexNet state_dict", "classifier.6.bias")
	}
	if len(last.Shape) != 1 || last.Shape[0] < 1 {
		return Spec{}, fmt.Errorf("tensor %q has shape %v, want [classes]", "classifier.6.bias", last.Shape)
	}
	classes := last.Shape[0]
	if variant != "" {
		return NewSpec(variant, classes)
	}
	for _, name := range Variants() {
		spec, _ := NewSpec(name, classes)
		p := NewParams(spec)
		if fillParams(f, p, false) == nil {
			return spec, nil
		}
	}
	return Spec{}, fmt.Errorf("shapes match no known variant (%s); features.0.weight is %v", strings.Join(Variants(), ", "), f.Tensors["features.0.weight"].Shape)
}

// fillParams checks the file's tensors against p's layout and, when copyIn is
// set, copies them in.
func fillParams(f *STFile, p *Params, copyIn bool) error {
	want := make(map[string]bool, len(p.Layout))
	for _, t := range p.Layout {
		want[t.Name] = true
		st, ok := f.Tensors[t.Name]
		if !ok {
			return fmt.Errorf("missing tensor %q (variant %s)", t.Name, p.Spec.Variant)
		}
		if st.DType != "F32" {
			return fmt.Errorf("tensor %q is %s, want F32", t.Name, st.DType)
		}
		if !sameShape(st.Shape, t.Shape) {
			return fmt.Errorf("tensor %q has shape %v, want %v (variant %s, %d classes)", t.Name, st.Shape, t.Shape, p.Spec.Variant, p.Spec.Classes)
		}
		if copyIn {
			v, _ := st.Float32s()
			copy(p.Flat[t.Offset:t.Offset+t.Size], v)
		}
	}
	var extra []string
	for name := range f.Tensors {
		if !want[name] {
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return fmt.Errorf("unexpected tensors %v (variant %s)", extra, p.Spec.Variant)
	}
	return nil
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
