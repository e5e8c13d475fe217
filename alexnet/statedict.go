package alexnet

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// ReadStateDict reads a checkpoint's named tensors: safetensors, or PyTorch .pth/.pt (zip or legacy),
// wrappers and the module. prefix removed. names are in file order.
func ReadStateDict(path string) (names []string, tensors map[string]STTensor, err error) {
	pth, err := IsPthFile(path)
	if err != nil {
		return nil, nil, err
	}
	if pth {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, fmt.Errorf("alexnet: %w", err)
		}
		if names, tensors, err = ParsePth(data); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		names, tensors = stripModule(names, tensors)
		return names, tensors, nil
	}
	f, err := ReadSafetensors(path)
	if err != nil {
		return nil, nil, err
	}
	names, tensors = stripModule(f.Names, f.Tensors)
	return names, tensors, nil
}

// IsPthFile reports whether the file at path is a PyTorch checkpoint (by its
// first bytes, whatever its name) rather than safetensors. A pipe, which can
// be read only once, counts as safetensors.
func IsPthFile(path string) (bool, error) {
	fh, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("alexnet: %w", err)
	}
	defer fh.Close()
	if st, err := fh.Stat(); err != nil || !st.Mode().IsRegular() {
		return false, nil // a pipe is read once, as safetensors
	}
	head := make([]byte, 9)
	n, err := io.ReadFull(fh, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return false, fmt.Errorf("alexnet: %s: %w", path, err)
	}
	return isPth(head[:n]), nil
}

// stripModule removes the "module." prefix that torch.nn.DataParallel and
// DistributedDataParallel put on every name, when every name has it.
func stripModule(names []string, tensors map[string]STTensor) ([]string, map[string]STTensor) {
	const prefix = "module."
	for _, n := range names {
		if !strings.HasPrefix(n, prefix) {
			return names, tensors
		}
	}
	out := make(map[string]STTensor, len(tensors))
	stripped := make([]string, len(names))
	for i, n := range names {
		stripped[i] = strings.TrimPrefix(n, prefix)
		out[stripped[i]] = tensors[n]
	}
	return stripped, out
}

// loadPthModel is LoadModel of a PyTorch checkpoint: a state_dict has no
// metadata, so the variant is the one its shapes match and the class count
// that of classifier.6.bias.
func loadPthModel(path string) (*Params, ModelMeta, error) {
	_, tensors, err := ReadStateDict(path)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	p, meta, err := modelOf(&STFile{Tensors: tensors, Metadata: map[string]string{}})
	if err != nil {
		return nil, ModelMeta{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, meta, nil
}

// parsePthModel is loadPthModel of a file's bytes.
func parsePthModel(data []byte) (*Params, ModelMeta, error) {
	names, tensors, err := ParsePth(data)
	if err != nil {
		return nil, ModelMeta{}, err
	}
	_, tensors = stripModule(names, tensors)
	return modelOf(&STFile{Tensors: tensors, Metadata: map[string]string{}})
}
