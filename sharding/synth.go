package sharding

import (
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/alexring/alexring/internal/atomicfile"
)

// SynthClasses are the shapes of the synthetic dataset, one class each.
var SynthClasses = []string{"circle", "cross", "ring", "square", "triangle"}

// SynthConfig describes a synthetic ImageFolder.
type SynthConfig struct {
	Train, Val int    // images per class in train/ and val/
	Size       int    // side in pixels
	Seed       uint64 // the same seed writes the same files
	JPEG       bool   // JPEG (quality 90) instead of PNG
}

// Synthesize writes a learnable ImageFolder into dir: dir/{train,val}/<shape>/
// holding one shape each, of random size, place, turn and colour, on a darker
// background of another colour with a lighting gradient and noise. It is the
// built-in demo data and the tests' data; nothing else is needed. Every image
// has a random stream of its own (seed, class, index, split), so validation
// images are not training images, and other seeds give other images.
func Synthesize(dir string, cfg SynthConfig) error {
	if cfg.Size < 8 || cfg.Train < 1 || cfg.Val < 1 {
		return fmt.Errorf("sharding: synthetic dataset needs size >= 8 and at least one image per class and split, got %+v", cfg)
	}
	ext := ".png"
	if cfg.JPEG {
		ext = ".jpg"
	}
	type job struct {
		path, class string
		rng         *rand.Rand
	}
	var jobs []job
	for _, split := range []struct {
		name  string
		count int
	}{{"train", cfg.Train}, {"val", cfg.Val}} {
		for ci, class := range SynthClasses {
			folder := filepath.Join(dir, split.name, class)
			if err := os.MkdirAll(folder, 0o755); err != nil {
				return fmt.Errorf("sharding: %w", err)
			}
			for i := range split.count {
				// Each image has its own stream: train and val never share
				// one, and the files do not depend on the order of writing.
				rng := rand.New(rand.NewPCG(cfg.Seed, uint64(ci)<<40|uint64(i)<<1|boolBit(split.name == "val")))
				jobs = append(jobs, job{filepath.Join(folder, fmt.Sprintf("%s_%04d%s", class, i, ext)), class, rng})
			}
		}
	}
	// Writing is mostly waiting for fsync: many writers at once.
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		next     atomic.Int64
		stop     atomic.Bool // set on the first error: every writer stops
	)
	for range min(len(jobs), 4*runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				k := int(next.Add(1)) - 1
				if k >= len(jobs) {
					return
				}
				j := jobs[k]
				img := drawShape(j.class, cfg.Size, j.rng)
				err := atomicfile.Write(j.path, 0o644, func(w io.Writer) error {
					if cfg.JPEG {
						return jpeg.Encode(w, img, &jpeg.Options{Quality: 90})
					}
					return (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(w, img)
				})
				if err != nil {
					stop.Store(true)
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("sharding: %w", err)
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func drawShape(class string, size int, rng *rand.Rand) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	bg, fg := contrastingColours(rng)
	// Lighting: the background brightens linearly across the image.
	gx, gy := 60*(rng.Float64()-0.5), 60*(rng.Float64()-0.5)
	noise := 4 + 4*rng.Float64()
	s := float64(size)
	r := s * (0.25 + 0.08*rng.Float64())
	// Every shape lies within 1.2 r of its centre, whatever its turn: it
	// stays whole in the picture (but for the smallest sizes).
	margin := 1.2*r + 1
	cx := margin + rng.Float64()*max(0, s-2*margin)
	cy := margin + rng.Float64()*max(0, s-2*margin)
	sin, cos := math.Sincos(2 * math.Pi * rng.Float64())
	in := func(x, y float64) bool {
		dx, dy := (x-cx)/r, (y-cy)/r
		return inside(class, cos*dx+sin*dy, cos*dy-sin*dx)
	}
	// Which pixel corners the shape covers: a pixel whose four corners agree
	// is wholly in or out (no part of a shape is thinner than a pixel).
	corner := make([]bool, (size+1)*(size+1))
	for y := range size + 1 {
		for x := range size + 1 {
			corner[y*(size+1)+x] = in(float64(x), float64(y))
		}
	}
	for y := range size {
		for x := range size {
			k := corner[y*(size+1)+x:]
			a := 0.0
			switch boolInt(k[0]) + boolInt(k[1]) + boolInt(k[size+1]) + boolInt(k[size+2]) {
			case 4:
				a = 1
			case 0:
			default:
				// An edge: the pixel's coverage from 4x4 samples, smooth as
				// a camera sees it.
				covered := 0
				for sy := range 4 {
					for sx := range 4 {
						covered += boolInt(in(float64(x)+(float64(sx)+0.5)/4, float64(y)+(float64(sy)+0.5)/4))
					}
				}
				a = float64(covered) / 16
			}
			light := gx*(float64(x)/s-0.5) + gy*(float64(y)/s-0.5)
			n := rng.NormFloat64() * noise
			var c [3]uint8
			for k := range c {
				c[k] = clampByte((1-a)*(bg[k]+light) + a*fg[k] + n)
			}
			img.SetRGBA(x, y, color.RGBA{c[0], c[1], c[2], 255})
		}
	}
	return img
}

// contrastingColours picks a darker background and a brighter shape colour
// at random, the shape's brighter by at least 70 of 255 in luma. (Shapes of
// either polarity, or on light backgrounds, are a harder start: the tiny
// model then sat on its ln 5 plateau for epochs.)
func contrastingColours(rng *rand.Rand) (bg, fg [3]float64) {
	for {
		for k := range 3 {
			bg[k], fg[k] = 140*rng.Float64(), 100+155*rng.Float64()
		}
		if luma(fg)-luma(bg) >= 70 {
			return bg, fg
		}
	}
}

func luma(c [3]float64) float64 { return 0.299*c[0] + 0.587*c[1] + 0.114*c[2] }

// inside says whether (dx, dy), in units of the shape's radius from its
// centre (before the shape's turn), is part of the shape.
func inside(class string, dx, dy float64) bool {
	switch class {
	case "circle":
		return dx*dx+dy*dy <= 1
	case "ring":
		d := dx*dx + dy*dy
		return d <= 1 && d >= 0.4
	case "square":
		return math.Abs(dx) <= 0.85 && math.Abs(dy) <= 0.85
	case "cross":
		return (math.Abs(dx) <= 0.3 && math.Abs(dy) <= 1) || (math.Abs(dy) <= 0.3 && math.Abs(dx) <= 1)
	case "triangle":
		// Equilateral, its corners 1.15 from the centre: inside its three
		// edges, each at half that distance.
		for _, n := range [3][2]float64{{0, 1}, {-0.8660254037844386, -0.5}, {0.8660254037844386, -0.5}} {
			if dx*n[0]+dy*n[1] > 0.575 {
				return false
			}
		}
		return true
	}
	return false
}

func clampByte(v float64) uint8 {
	return uint8(math.Max(0, math.Min(255, math.Round(v))))
}
