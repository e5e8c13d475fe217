package alexnet

import (
	"encoding/hex"
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
	if err := fillParams(f, p); err != nil {
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
	// A state_dict without our metadata: the variant whose first convolution has
	// this width, so that a near miss is reported tensor by tensor.
	first := f.Tensors["features.0.weight"].Shape
	for _, name := range Variants() {
		spec, _ := NewSpec(name, classes)
		if len(first) > 0 && first[0] == spec.Widths[0] {
			return spec, nil
		}
	}
	return Spec{}, fmt.Errorf("features.0.weight has shape %v, which matches no known variant (%s)", first, strings.Join(Variants(), ", "))
}

// fillParams checks the file's tensors against p's layout, names, dtypes and
// shapes, with nothing missing or extra, and copies them in.
func fillParams(f *STFile, p *Params) error {
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
	for _, t := range p.Layout {
		v, _ := f.Tensors[t.Name].Float32s()
		copy(p.Flat[t.Offset:t.Offset+t.Size], v)
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

// TrainState is everything an exact resume needs: the parameters, Adam's moments
// and step count, where training stands, and the state of the dropout RNG.
type TrainState struct {
	Params   *Params
	Adam     *Adam
	Epoch    int     // epochs completed
	BestAcc  float64 // best validation accuracy so far
	Seed     uint64
	RNGState []byte // the dropout RNG's MarshalBinary
	Classes  []string
}

// SaveTrainState writes the training state to path as safetensors (atomically):
// three flat F32 tensors, "params", "adam.m" and "adam.v", in the model's layout.
func SaveTrainState(path string, s *TrainState) error {
	n := len(s.Params.Flat)
	if len(s.Adam.M) != n || len(s.Adam.V) != n {
		return fmt.Errorf("alexnet: save %s: Adam state of %d/%d values for %d parameters", path, len(s.Adam.M), len(s.Adam.V), n)
	}
	classes, _ := json.Marshal(s.Classes)
	md := map[string]string{
		metaFormat:      formatState,
		metaVariant:     s.Params.Spec.Variant,
		metaClasses:     string(classes),
		"num_classes":   strconv.Itoa(s.Params.Spec.Classes),
		metaEpoch:       strconv.Itoa(s.Epoch),
		"best_accuracy": strconv.FormatFloat(s.BestAcc, 'g', -1, 64),
		"seed":          strconv.FormatUint(s.Seed, 10),
		"adam.step":     strconv.FormatInt(s.Adam.Step, 10),
		"adam.lr":       strconv.FormatFloat(s.Adam.Config.LR, 'g', -1, 64),
		"adam.beta1":    strconv.FormatFloat(s.Adam.Config.Beta1, 'g', -1, 64),
		"adam.beta2":    strconv.FormatFloat(s.Adam.Config.Beta2, 'g', -1, 64),
		"adam.eps":      strconv.FormatFloat(s.Adam.Config.Eps, 'g', -1, 64),
		"rng":           hex.EncodeToString(s.RNGState),
	}
	tensors := map[string]STTensor{
		"params": F32Tensor(s.Params.Flat, n),
		"adam.m": F32Tensor(s.Adam.M, n),
		"adam.v": F32Tensor(s.Adam.V, n),
	}
	return WriteSafetensors(path, []string{"params", "adam.m", "adam.v"}, tensors, md)
}

// LoadTrainState reads a training state written by SaveTrainState.
func LoadTrainState(path string) (*TrainState, error) {
	f, err := ReadSafetensors(path)
	if err != nil {
		return nil, err
	}
	s, err := trainState(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func trainState(f *STFile) (*TrainState, error) {
	md := f.Metadata
	if md[metaFormat] != formatState {
		return nil, fmt.Errorf("not a training state (format %q, want %q)", md[metaFormat], formatState)
	}
	var perr error
	num := func(key string) float64 {
		v, err := strconv.ParseFloat(md[key], 64)
		if err != nil && perr == nil {
			perr = fmt.Errorf("metadata %q = %q is not a number", key, md[key])
		}
		return v
	}
	classes := int(num("num_classes"))
	s := &TrainState{Epoch: int(num(metaEpoch)), BestAcc: num("best_accuracy"), Seed: uint64(num("seed"))}
	cfg := AdamConfig{LR: num("adam.lr"), Beta1: num("adam.beta1"), Beta2: num("adam.beta2"), Eps: num("adam.eps")}
	step := int64(num("adam.step"))
	if perr != nil {
		return nil, perr
	}
	// The seed may exceed a float64's exact range; parse it again as an integer.
	if seed, err := strconv.ParseUint(md["seed"], 10, 64); err == nil {
		s.Seed = seed
	}
	if err := json.Unmarshal([]byte(md[metaClasses]), &s.Classes); err != nil {
		return nil, fmt.Errorf("metadata %q: %v", metaClasses, err)
	}
	rng, err := hex.DecodeString(md["rng"])
	if err != nil {
		return nil, fmt.Errorf("metadata \"rng\": %v", err)
	}
	s.RNGState = rng
	spec, err := NewSpec(md[metaVariant], classes)
	if err != nil {
		return nil, err
	}
	s.Params = NewParams(spec)
	if s.Adam, err = NewAdam(cfg, len(s.Params.Flat)); err != nil {
		return nil, err
	}
	s.Adam.Step = step
	for name, dst := range map[string][]float32{"params": s.Params.Flat, "adam.m": s.Adam.M, "adam.v": s.Adam.V} {
		t, ok := f.Tensors[name]
		if !ok {
			return nil, fmt.Errorf("missing tensor %q", name)
		}
		if t.DType != "F32" || !sameShape(t.Shape, []int{len(dst)}) {
			return nil, fmt.Errorf("tensor %q is %s%v, want F32[%d] for variant %s with %d classes", name, t.DType, t.Shape, len(dst), spec.Variant, classes)
		}
		v, _ := t.Float32s()
		copy(dst, v)
	}
	return s, nil
}
