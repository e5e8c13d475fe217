package sharding

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"

	"go.uber.org/zap"
)

// LoaderConfig says how a shard becomes batches.
type LoaderConfig struct {
	Side       int    // output side in pixels (224 for the seed)
	Batch      int    // samples per batch; the last one may be short
	Augment    bool   // train transforms (RandomResizedCrop, flip); else Resize only
	Seed       uint64 // with Epoch and the sample index, seeds each sample's crop and flip
	Epoch      int
	Goroutines int // decode+augment goroutines; 0 means GOMAXPROCS
	Prefetch   int // batches decoded ahead of the consumer; 0 means 2

	// Normalize is the mean and std after ToTensor (the zero value: the seed's).
	Normalize Normalization
}

func (c *LoaderConfig) validate() error {
	if c.Side < 1 || c.Batch < 1 {
		return fmt.Errorf("sharding: loader side %d batch %d", c.Side, c.Batch)
	}
	if c.Normalize != NormalizeSeed && c.Normalize != NormalizeImageNet {
		return fmt.Errorf("sharding: loader normalisation %d", c.Normalize)
	}
	if c.Goroutines <= 0 {
		c.Goroutines = runtime.GOMAXPROCS(0)
	}
	if c.Prefetch <= 0 {
		c.Prefetch = 2
	}
	return nil
}

// Batch is a run of consecutive shard samples as normalised CHW float32 images.
// Its buffers belong to the loader: Release it when done.
type Batch struct {
	Number  int       // 0-based batch number in the shard
	Count   int       // samples in it (Batch, or fewer for the last)
	Images  []float32 // Count*3*Side*Side values, room for a full batch
	Labels  []int
	Indices []int // dataset indices actually loaded (after replacements)
	filled  int
}

// BadFiles remembers the files that failed to load, so each is logged once
// however many epochs meet it. It is safe for concurrent use.
type BadFiles struct {
	mu   sync.Mutex
	seen map[string]bool
	log  *zap.Logger
}

// NewBadFiles returns an empty registry that logs to log.
func NewBadFiles(log *zap.Logger) *BadFiles {
	return &BadFiles{seen: map[string]bool{}, log: log}
}

func (b *BadFiles) record(path string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.seen[path] {
		b.seen[path] = true
		b.log.Warn("skipping unreadable image; another sample of the shard takes its place", zap.String("path", path), zap.Error(err))
	}
}

// Count is the number of distinct bad files met so far.
func (b *BadFiles) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.seen)
}

// Loader decodes and transforms a shard into batches with a pool of goroutines,
// Prefetch batches ahead, into buffers it reuses. The batches are the same bytes
// whatever the number of goroutines: each sample's randomness comes from its own
// RNG seeded by (seed, epoch, sample index).
type Loader struct {
	ds    *Dataset
	shard []int
	cfg   LoaderConfig
	bad   *BadFiles

	mu        sync.Mutex
	cond      *sync.Cond
	slots     []*Batch
	next      int // next shard position to claim
	delivered int // batches handed to the consumer
	released  int // batches given back
	replaced  int
	err       error
	stop      context.CancelFunc
	ctx       context.Context
	wg        sync.WaitGroup
}

// NewLoader starts loading shard (dataset indices) of ds. Close it to stop the
// goroutines; cancelling ctx does the same.
func NewLoader(ctx context.Context, ds *Dataset, shard []int, cfg LoaderConfig, bad *BadFiles) (*Loader, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	for _, i := range shard {
		if i < 0 || i >= len(ds.Samples) {
			return nil, fmt.Errorf("sharding: shard index %d outside %s's %d samples", i, ds.Root, len(ds.Samples))
		}
	}
	ctx, stop := context.WithCancel(ctx)
	l := &Loader{ds: ds, shard: shard, cfg: cfg, bad: bad, stop: stop, ctx: ctx}
	l.cond = sync.NewCond(&l.mu)
	per := 3 * cfg.Side * cfg.Side
	for range cfg.Prefetch {
		l.slots = append(l.slots, &Batch{
			Images:  make([]float32, cfg.Batch*per),
			Labels:  make([]int, cfg.Batch),
			Indices: make([]int, cfg.Batch),
		})
	}
	// Wake every waiter when the context ends, so nothing blocks past it.
	context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	for range cfg.Goroutines {
		l.wg.Add(1)
		go l.work()
	}
	return l, nil
}

// Batches is the number of batches the shard makes.
func (l *Loader) Batches() int { return (len(l.shard) + l.cfg.Batch - 1) / l.cfg.Batch }

func (l *Loader) batchSize(n int) int {
	return min(l.cfg.Batch, len(l.shard)-n*l.cfg.Batch)
}

// work claims shard positions in order, waiting while their batch's buffer is
// still held by the consumer, and fills them in.
func (l *Loader) work() {
	defer l.wg.Done()
	var st sampleState
	defer st.close()
	for {
		l.mu.Lock()
		for l.ctx.Err() == nil && l.err == nil && l.next < len(l.shard) && l.next/l.cfg.Batch >= l.released+len(l.slots) {
			l.cond.Wait()
		}
		if l.ctx.Err() != nil || l.err != nil || l.next >= len(l.shard) {
			l.mu.Unlock()
			return
		}
		pos := l.next
		l.next++
		n := pos / l.cfg.Batch
		b := l.slots[n%len(l.slots)]
		l.mu.Unlock()

		k := pos % l.cfg.Batch
		idx, replaced, err := l.loadWithReplacement(pos, &st, b.Images[k*3*l.cfg.Side*l.cfg.Side:(k+1)*3*l.cfg.Side*l.cfg.Side])

		l.mu.Lock()
		if err != nil && l.err == nil {
			l.err = err
			l.cond.Broadcast() // Next waits for a full batch; wake it for the error
		}
		b.Labels[k] = l.ds.Samples[idx].Label
		b.Indices[k] = idx
		l.replaced += replaced
		b.filled++
		if b.filled == l.batchSize(n) {
			l.cond.Broadcast()
		}
		l.mu.Unlock()
	}
}

// loadWithReplacement loads the sample at shard position pos, or when its file
// is bad the next good one of the shard (wrapping around), so the batch stays
// full and the choice is the same on every run.
func (l *Loader) loadWithReplacement(pos int, st *sampleState, dst []float32) (idx, replaced int, err error) {
	for try := 0; try < len(l.shard); try++ {
		idx = l.shard[(pos+try)%len(l.shard)]
		s := l.ds.Samples[idx]
		err := st.load(s.Path, idx, l.cfg, dst)
		if err == nil {
			return idx, min(try, 1), nil
		}
		l.bad.record(s.Path, err)
	}
	return idx, 0, fmt.Errorf("sharding: no readable image in a shard of %d samples of %s", len(l.shard), l.ds.Root)
}

// Next returns the next batch in order, io.EOF after the last, or the error
// that stopped the loader.
func (l *Loader) Next() (*Batch, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.delivered
	if n >= l.Batches() {
		return nil, io.EOF
	}
	b := l.slots[n%len(l.slots)]
	for l.ctx.Err() == nil && l.err == nil && !(n < l.released+len(l.slots) && b.filled == l.batchSize(n)) {
		l.cond.Wait()
	}
	if l.err != nil {
		return nil, l.err
	}
	if err := l.ctx.Err(); err != nil {
		return nil, err
	}
	l.delivered++
	b.Number, b.Count = n, l.batchSize(n)
	return b, nil
}

// Release gives a batch's buffers back for loading; batches are released in
// the order Next returned them.
func (l *Loader) Release(b *Batch) {
	l.mu.Lock()
	b.filled = 0
	l.released++
	l.cond.Broadcast()
	l.mu.Unlock()
}

// Replaced is how many samples were replaced because their file was bad.
func (l *Loader) Replaced() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.replaced
}

// Close stops the goroutines and waits for them.
func (l *Loader) Close() {
	l.stop()
	l.wg.Wait()
}

// sampleState is one goroutine's reusable buffers.
type sampleState struct {
	dec     *Decoder
	file    bytes.Buffer
	rgb     RGB
	resizer Resizer
	square  []uint8
}

func (st *sampleState) close() {
	if st.dec != nil {
		st.dec.Close()
	}
}

// SampleRNG is the RNG of one sample's augmentation in one epoch.
func SampleRNG(seed uint64, epoch, index int) *rand.Rand {
	return rand.New(rand.NewPCG(seed^uint64(epoch)*0x9e3779b97f4a7c15, uint64(index)))
}

func (st *sampleState) load(path string, index int, cfg LoaderConfig, dst []float32) error {
	if err := readFile(path, &st.file); err != nil {
		return err
	}
	if err := st.decodeTransform(st.file.Bytes(), index, cfg, dst); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// readFile reads a whole image file into buf. What is not a regular file is
// refused before opening it: a folder named like an image, a FIFO (opening it
// would block), a device such as /dev/zero (it never ends).
func readFile(path string, buf *bytes.Buffer) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s)", path, fileKind(fi.Mode()))
	}
	if fi.Size() > MaxFileBytes {
		return fmt.Errorf("%s: %d bytes, over the limit of %d bytes (sharding.MaxFileBytes)", path, fi.Size(), MaxFileBytes)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf.Reset()
	buf.Grow(int(fi.Size()))
	// The limit holds even for a file that grows while it is read.
	n, err := buf.ReadFrom(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return err
	}
	if n > MaxFileBytes {
		return fmt.Errorf("%s: over the limit of %d bytes (sharding.MaxFileBytes)", path, MaxFileBytes)
	}
	return nil
}

// fileKind names what a path that is not a regular file is, for the error.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}

// decodeTransform decodes an image file's bytes and transforms it into dst:
// the loader's path from bytes to tensor.
func (st *sampleState) decodeTransform(data []byte, index int, cfg LoaderConfig, dst []float32) error {
	if st.dec == nil {
		st.dec = NewDecoder()
	}
	if err := st.dec.Decode(data, &st.rgb); err != nil {
		return err
	}
	return st.transform(index, cfg, dst)
}

func (st *sampleState) transform(index int, cfg LoaderConfig, dst []float32) error {
	crop := Crop{H: st.rgb.H, W: st.rgb.W}
	flip := false
	if cfg.Augment {
		rng := SampleRNG(cfg.Seed, cfg.Epoch, index)
		crop = RandomResizedCropParams(st.rgb.W, st.rgb.H, rng)
		flip = rng.Float64() < 0.5
	}
	n := 3 * cfg.Side * cfg.Side
	if cap(st.square) < n {
		st.square = make([]uint8, n)
	}
	st.resizer.Resize(&st.rgb, crop, cfg.Side, cfg.Side, st.square[:n])
	ToTensor(st.square[:n], cfg.Side, flip, cfg.Normalize, dst)
	return nil
}

// LoadImage decodes one file with the evaluation transform (Resize to side,
// normalise with norm) into dst: what predict does to its inputs.
func LoadImage(path string, side int, norm Normalization, dst []float32) error {
	var st sampleState
	defer st.close()
	if err := st.load(path, 0, LoaderConfig{Side: side, Normalize: norm}, dst); err != nil {
		if errors.Is(err, ErrDecode) {
			return err // it names the file already
		}
		return fmt.Errorf("sharding: %w", err)
	}
	return nil
}
