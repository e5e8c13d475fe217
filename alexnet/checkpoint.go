package alexnet

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
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
	metaNorm     = "normalize"    // the inputs' normalisation (sharding.ParseNormalization)
	metaFreeze   = "freeze"       // a training state's --freeze (ParseFreeze)
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
	// Normalize is the inputs' normalisation the model trained with, by name
	// ("seed" or "imagenet"; sharding.ParseNormalization reads it). A file
	// without it (older ones, and a .pth, which has no metadata) loads as
	// "seed".
	Normalize string
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
		metaNorm:     meta.Normalize,
	}
	if meta.Normalize == "" {
		md[metaNorm] = "seed"
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
	if pth, err := IsPthFile(path); err == nil && pth {
		return loadPthModel(path)
	}
	f, err := ReadSafetensors(path)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	p, meta, err := modelOf(f)
	if err != nil {
		return nil, ModelMeta{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, meta, nil
}

// ParseModel is LoadModel of a file's bytes.
func ParseModel(data []byte) (*Params, ModelMeta, error) {
	if isPth(data) {
		return parsePthModel(data)
	}
	f, err := ParseSafetensors(data)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	return modelOf(f)
}

func modelOf(f *STFile) (*Params, ModelMeta, error) {
	meta, err := modelMeta(f.Metadata)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	spec, err := specOf(f, meta.Variant)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	if len(meta.Classes) > 0 && len(meta.Classes) != spec.Classes {
		return nil, ModelMeta{}, fmt.Errorf("metadata names %d classes, classifier.6.bias has %d", len(meta.Classes), spec.Classes)
	}
	meta.Variant = spec.Variant
	p, err := fillParams(f, spec)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	return p, meta, nil
}

func modelMeta(md map[string]string) (ModelMeta, error) {
	m := ModelMeta{Variant: md[metaVariant], Normalize: md[metaNorm]}
	if m.Normalize == "" {
		m.Normalize = "seed" // written before the setting existed
	}
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
	if len(last.Shape) != 1 || last.Shape[0] < 1 || last.DType != "F32" {
		return Spec{}, fmt.Errorf("tensor %q is %s%v, want F32[classes]", "classifier.6.bias", last.DType, last.Shape)
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

// fillParams checks the file's tensors against spec's layout, names, dtypes
// and shapes, with nothing missing or extra, and copies them into new
// parameters: allocated only once the file is known to hold them all, so that
// no header's claim allocates more than the file's size.
func fillParams(f *STFile, spec Spec) (*Params, error) {
	layout := spec.Layout()
	want := make(map[string]bool, len(layout))
	for _, t := range layout {
		want[t.Name] = true
		st, ok := f.Tensors[t.Name]
		if !ok {
			return nil, fmt.Errorf("missing tensor %q (variant %s)", t.Name, spec.Variant)
		}
		if st.DType != "F32" {
			return nil, fmt.Errorf("tensor %q is %s, want F32", t.Name, st.DType)
		}
		if !sameShape(st.Shape, t.Shape) {
			return nil, fmt.Errorf("tensor %q has shape %v, want %v (variant %s, %d classes)", t.Name, st.Shape, t.Shape, spec.Variant, spec.Classes)
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
		return nil, fmt.Errorf("unexpected tensors %v (variant %s)", extra, spec.Variant)
	}
	if flat := f.mappedFlat(layout); flat != nil { // OpenModel: no copy
		return &Params{Spec: spec, Flat: flat, Layout: layout}, nil
	}
	p := NewParams(spec)
	for _, t := range p.Layout {
		decodeF32(p.Flat[t.Offset:t.Offset+t.Size], f.Tensors[t.Name].Data)
	}
	return p, nil
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
	// Normalize and Freeze are the --normalize and --freeze it trained with,
	// which a resume must keep. Empty is written as "seed" and "none"; a
	// state without them (older ones) reads so too.
	Normalize string
	Freeze    Freeze
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
		metaNorm:        cmp.Or(s.Normalize, "seed"),
		metaFreeze:      string(cmp.Or(s.Freeze, FreezeNone)),
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

// ParseTrainState is LoadTrainState of a file's bytes.
func ParseTrainState(data []byte) (*TrainState, error) {
	f, err := ParseSafetensors(data)
	if err != nil {
		return nil, err
	}
	return trainState(f)
}

func trainState(f *STFile) (*TrainState, error) {
	md := f.Metadata
	if md[metaFormat] != formatState {
		return nil, fmt.Errorf("not a training state (format %q, want %q)", md[metaFormat], formatState)
	}
	var perr error
	bad := func(key string) {
		if perr == nil {
			perr = fmt.Errorf("metadata %q = %q is not a valid value", key, md[key])
		}
	}
	integer := func(key string, lo int64) int64 {
		v, err := strconv.ParseInt(md[key], 10, 64)
		if err != nil || v < lo {
			bad(key)
		}
		return v
	}
	// Every float is checked here (NaN passes comparisons that exclude it).
	real := func(key string, ok func(float64) bool) float64 {
		v, err := strconv.ParseFloat(md[key], 64)
		if err != nil || !ok(v) {
			bad(key)
		}
		return v
	}
	unit := func(v float64) bool { return v >= 0 && v < 1 }
	positive := func(v float64) bool { return v > 0 && !math.IsInf(v, 0) }
	classes := integer("num_classes", 1)
	s := &TrainState{Epoch: int(integer(metaEpoch, 0)), BestAcc: real("best_accuracy", func(v float64) bool { return v >= 0 && v <= 1 })}
	cfg := AdamConfig{LR: real("adam.lr", positive), Beta1: real("adam.beta1", unit), Beta2: real("adam.beta2", unit), Eps: real("adam.eps", positive)}
	step := integer("adam.step", 0)
	seed, err := strconv.ParseUint(md["seed"], 10, 64)
	if err != nil {
		bad("seed")
	}
	s.Seed = seed
	s.Normalize = cmp.Or(md[metaNorm], "seed")
	if s.Freeze, err = ParseFreeze(md[metaFreeze]); err != nil {
		bad(metaFreeze)
	}
	if perr != nil {
		return nil, perr
	}
	if err := json.Unmarshal([]byte(md[metaClasses]), &s.Classes); err != nil {
		return nil, fmt.Errorf("metadata %q: %v", metaClasses, err)
	}
	if len(s.Classes) != 0 && int64(len(s.Classes)) != classes {
		return nil, fmt.Errorf("metadata %q names %d classes, num_classes is %d", metaClasses, len(s.Classes), classes)
	}
	rng, err := hex.DecodeString(md["rng"])
	if err != nil {
		return nil, fmt.Errorf("metadata \"rng\": %v", err)
	}
	s.RNGState = rng
	spec, err := NewSpec(md[metaVariant], 1)
	if err != nil {
		return nil, err
	}
	// The class count must fit the parameters the file holds before the
	// spec's sizes are computed from it (they could overflow) or allocated.
	held := 0
	if t, ok := f.Tensors["params"]; ok && len(t.Shape) == 1 {
		held = t.Shape[0]
	}
	if classes > int64(held/(spec.Hidden+1)) {
		return nil, fmt.Errorf("num_classes %d: a %s model of that many classes does not fit the %d values of tensor \"params\"", classes, spec.Variant, held)
	}
	if spec, err = NewSpec(md[metaVariant], int(classes)); err != nil {
		return nil, err
	}
	n := spec.NumParams()
	for _, name := range []string{"params", "adam.m", "adam.v"} {
		t, ok := f.Tensors[name]
		if !ok {
			return nil, fmt.Errorf("missing tensor %q", name)
		}
		if t.DType != "F32" || !sameShape(t.Shape, []int{n}) {
			return nil, fmt.Errorf("tensor %q is %s%v, want F32[%d] for variant %s with %d classes", name, t.DType, t.Shape, n, spec.Variant, classes)
		}
	}
	if len(f.Tensors) != 3 {
		return nil, fmt.Errorf("%d tensors, want params, adam.m and adam.v", len(f.Tensors))
	}
	s.Params = NewParams(spec)
	if s.Adam, err = NewAdam(cfg, n); err != nil {
		return nil, err
	}
	s.Adam.Step = step
	decodeF32(s.Params.Flat, f.Tensors["params"].Data)
	decodeF32(s.Adam.M, f.Tensors["adam.m"].Data)
	decodeF32(s.Adam.V, f.Tensors["adam.v"].Data)
	return s, nil
}

// decodeF32 decodes little-endian float32 bytes into dst, without the copy
// that Float32s makes.
func decodeF32(dst []float32, data []byte) {
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
	}
}
