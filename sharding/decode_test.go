package sharding

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"runtime/metrics"
	"strings"
	"testing"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

// testdata/make_zoo_fixture.py wrote images in unusual modes and PIL's
// convert("RGB") of each.
func TestDecodeLikePIL(t *testing.T) {
	for _, c := range []struct {
		file string
		tol  int // JPEG decoders round their IDCT differently
	}{
		{"zoo_cmyk.jpg", 3}, {"zoo_gray.png", 0}, {"zoo_rgba.png", 0},
		{"zoo_palette.png", 0}, {"zoo_gray16.png", 0}, {"zoo_gray_alpha.png", 0},
		{"zoo_rgb420.jpg", jpegTolerance}, {"zoo_rgb444.jpg", jpegTolerance}, {"zoo_gray8.jpg", jpegTolerance},
	} {
		data, err := os.ReadFile("testdata/" + c.file)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile("testdata/" + strings.Split(c.file, ".")[0] + ".rgb")
		if err != nil {
			t.Fatal(err)
		}
		var got RGB
		if err := Decode(data, &got); err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		if got.W*got.H*3 != len(want) {
			t.Errorf("%s: %dx%d", c.file, got.W, got.H)
			continue
		}
		worst := 0
		for i := range want {
			d := int(got.Pix[i]) - int(want[i])
			worst = max(worst, d, -d)
		}
		if worst > c.tol {
			t.Errorf("%s: differs from PIL's convert(\"RGB\") by up to %d (tolerance %d)", c.file, worst, c.tol)
		}
	}
}

func TestDecodeRejectsBadFiles(t *testing.T) {
	good, _ := os.ReadFile("testdata/zoo_cmyk.jpg")
	png, _ := os.ReadFile("testdata/zoo_rgba.png")
	for name, data := range map[string][]byte{
		"empty":          nil,
		"text":           []byte("this is not an image\n"),
		"truncated jpeg": good[:len(good)/2],
		"truncated png":  png[:len(png)-30],
		"bad ppm":        []byte("P6\n4 4\n255\nabc"),
	} {
		var img RGB
		if err := Decode(data, &img); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// Builders of small files whose headers say what a test wants.

func pngOfSize(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, c.Sum32())
	}
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	chunk("IHDR", append(ihdr, 8, 2, 0, 0, 0)) // 8-bit RGB
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(make([]byte, 4))
	zw.Close()
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return b.Bytes()
}

func encodeJPEG(t testing.TB, img image.Image) []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// jpegWithSize rewrites the size in a JPEG's frame header.
func jpegWithSize(t testing.TB, data []byte, w, h int) []byte {
	out := bytes.Clone(data)
	for i := 2; i+9 < len(out); {
		m := out[i+1]
		if m >= 0xc0 && m <= 0xc2 {
			binary.BigEndian.PutUint16(out[i+5:], uint16(h))
			binary.BigEndian.PutUint16(out[i+7:], uint16(w))
			return out
		}
		i += 2 + int(binary.BigEndian.Uint16(out[i+2:]))
	}
	t.Fatal("no SOF marker")
	return nil
}

func bmpOfSize(t testing.TB, w, h int32) []byte {
	var b bytes.Buffer
	if err := bmp.Encode(&b, image.NewRGBA(image.Rect(0, 0, 2, 2))); err != nil {
		t.Fatal(err)
	}
	out := b.Bytes()
	binary.LittleEndian.PutUint32(out[18:], uint32(w))
	binary.LittleEndian.PutUint32(out[22:], uint32(h))
	return out
}

// tiffOfSize rewrites ImageWidth and ImageLength in a TIFF written by
// x/image/tiff (little-endian, SHORT values).
func tiffOfSize(t testing.TB, w, h uint16) []byte {
	var b bytes.Buffer
	if err := tiff.Encode(&b, image.NewGray(image.Rect(0, 0, 2, 2)), nil); err != nil {
		t.Fatal(err)
	}
	out := b.Bytes()
	ifd := int(binary.LittleEndian.Uint32(out[4:]))
	n := int(binary.LittleEndian.Uint16(out[ifd:]))
	for e := ifd + 2; e < ifd+2+12*n; e += 12 {
		switch binary.LittleEndian.Uint16(out[e:]) {
		case 256:
			binary.LittleEndian.PutUint16(out[e+8:], w)
		case 257:
			binary.LittleEndian.PutUint16(out[e+8:], h)
		}
	}
	return out
}

// 1x1 WebP files: lossless (VP8L), lossy (VP8) and lossy with alpha (VP8X).
var (
	webpLossless = []byte("RIFF\x1a\x00\x00\x00WEBPVP8L\r\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00")
	webpLossy    = []byte("RIFF\"\x00\x00\x00WEBPVP8 \x16\x00\x00\x000\x01\x00\x9d\x01*\x01\x00\x01\x00\x0e\xc0\xfe%\xa4\x00\x03p\x00\x00\x00\x00")
	webpAlpha    = []byte("RIFFJ\x00\x00\x00WEBPVP8X\n\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00ALPH\x0c\x00\x00\x00\x11\x07\x10\x11\xfd\x0fDD\xff\x03\x00\x00VP8 \x18\x00\x00\x00\x14\x01\x00\x9d\x01*\x01\x00\x01\x00\x00\x00\xfe\x00\x00\r\xc0\x00\xfe\xe6\xb5\x00\x00\x00")
)

// webpLosslessOfSize rewrites the VP8L header's 14-bit width-1 and height-1.
func webpLosslessOfSize(w, h int) []byte {
	out := bytes.Clone(webpLossless)
	bits := uint32(w-1) | uint32(h-1)<<14 | uint32(out[24]>>4)<<28
	binary.LittleEndian.PutUint32(out[21:], bits)
	return out
}

// webpCanvasOfSize rewrites the VP8X canvas of the file with alpha.
func webpCanvasOfSize(w, h int) []byte {
	out := bytes.Clone(webpAlpha)
	for i, v := range []int{w - 1, h - 1} {
		out[24+3*i], out[25+3*i], out[26+3*i] = byte(v), byte(v>>8), byte(v>>16)
	}
	return out
}

// allocated is how many bytes of heap f allocates.
func allocated(f func()) uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	f()
	metrics.Read(s)
	return s[0].Value.Uint64() - before
}

// A small file whose header claims a huge image is refused from its header:
// an error naming the size, and next to nothing allocated.
func TestDecodeRefusesBombs(t *testing.T) {
	gray := encodeJPEG(t, image.NewGray(image.Rect(0, 0, 16, 16)))
	cmyk, err := os.ReadFile("testdata/zoo_cmyk.jpg")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, size string
		data       []byte
	}{
		{"png", "100000x100000", pngOfSize(100000, 100000)},
		{"png wide", "200000000x1", pngOfSize(200000000, 1)},
		{"jpeg", "65500x65500", jpegWithSize(t, gray, 65500, 65500)},
		{"cmyk jpeg (Go's decoder)", "65500x65500", jpegWithSize(t, cmyk, 65500, 65500)},
		{"bmp", "100000x100000", bmpOfSize(t, 100000, 100000)},
		{"bmp top-down", "100000x100000", bmpOfSize(t, 100000, -100000)},
		{"tiff", "65535x65535", tiffOfSize(t, 65535, 65535)},
		{"webp lossless", "16384x16384", webpLosslessOfSize(16384, 16384)},
		{"webp canvas", "40000x50000", webpCanvasOfSize(40000, 50000)},
		{"ppm", "30000x30000", []byte("P6\n30000 30000\n255\n\x00\x00\x00")},
		{"pgm 16-bit", "20000x20000", []byte("P5 20000 20000 65535 \x00\x00")},
	} {
		var img RGB
		var err error
		n := allocated(func() { err = Decode(c.data, &img) })
		if !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), c.size) || !strings.Contains(err.Error(), "sharding.MaxPixels") {
			t.Errorf("%s (%d bytes): %v; want an ErrDecode naming %s and the limit", c.name, len(c.data), err, c.size)
		}
		if n > 8<<20 {
			t.Errorf("%s: %d MB allocated to refuse it", c.name, n>>20)
		}
	}
}

// The limit is exact: an image of limit pixels decodes, one more row or
// column does not, in every format.
func TestDecodePixelLimitBoundary(t *testing.T) {
	const w, h = 64, 48
	d := newDecoder(w * h)
	defer d.Close()
	gradient := func(w, h int) *image.NRGBA {
		m := image.NewNRGBA(image.Rect(0, 0, w, h))
		for i := range m.Pix {
			m.Pix[i] = uint8(i)
		}
		return m
	}
	enc := map[string]func(w, h int) []byte{
		"png": func(w, h int) []byte {
			var b bytes.Buffer
			png.Encode(&b, gradient(w, h))
			return b.Bytes()
		},
		"jpeg": func(w, h int) []byte { return encodeJPEG(t, gradient(w, h)) },
		"jpeg gray": func(w, h int) []byte {
			return encodeJPEG(t, image.NewGray(image.Rect(0, 0, w, h)))
		},
		"bmp": func(w, h int) []byte {
			var b bytes.Buffer
			bmp.Encode(&b, gradient(w, h))
			return b.Bytes()
		},
		"tiff": func(w, h int) []byte {
			var b bytes.Buffer
			tiff.Encode(&b, gradient(w, h), &tiff.Options{Compression: tiff.Deflate})
			return b.Bytes()
		},
		"ppm": func(w, h int) []byte {
			return append(fmt.Appendf(nil, "P6\n%d %d\n255\n", w, h), make([]byte, 3*w*h)...)
		},
		"pgm": func(w, h int) []byte {
			return append(fmt.Appendf(nil, "P5 %d %d 255\n", w, h), make([]byte, w*h)...)
		},
	}
	for name, e := range enc {
		var img RGB
		if err := d.Decode(e(w, h), &img); err != nil || img.W != w || img.H != h {
			t.Errorf("%s %dx%d at a limit of %d pixels: %v (%dx%d)", name, w, h, w*h, err, img.W, img.H)
		}
		for _, big := range [][2]int{{w + 1, h}, {w, h + 1}} {
			if err := d.Decode(e(big[0], big[1]), &img); !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "over the limit") {
				t.Errorf("%s %dx%d at a limit of %d pixels: %v", name, big[0], big[1], w*h, err)
			}
		}
	}
	// WebP: the 1x1 files at a limit of 1.
	one := newDecoder(1)
	defer one.Close()
	for _, data := range [][]byte{webpLossless, webpLossy, webpAlpha} {
		var img RGB
		if err := one.Decode(data, &img); err != nil || img.W != 1 || img.H != 1 {
			t.Errorf("1x1 WebP at a limit of 1: %v", err)
		}
	}
	// A JPEG is allocated in whole MCUs (8x8 for gray): a 1-pixel-wide one
	// takes 8 columns.
	var img RGB
	thin := encodeJPEG(t, image.NewGray(image.Rect(0, 0, 1, w*h)))
	if err := d.Decode(thin, &img); !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "8x3072 in whole MCUs") {
		t.Errorf("1x%d JPEG at a limit of %d pixels: %v", w*h, w*h, err)
	}
}

// Large images within the limit still decode, thin ones too (the JPEG in
// whole MCUs is 8 or 16 times its size).
func TestDecodeLargeLegalImages(t *testing.T) {
	for _, r := range []image.Rectangle{image.Rect(0, 0, 1, 1000000), image.Rect(0, 0, 1000000, 1)} {
		m := image.NewGray(r)
		for i := range m.Pix {
			m.Pix[i] = uint8(i % 251)
		}
		var b bytes.Buffer
		png.Encode(&b, m)
		var img RGB
		if err := Decode(b.Bytes(), &img); err != nil || img.W != r.Dx() || img.H != r.Dy() || img.Pix[3*1000] != uint8(1000%251) {
			t.Errorf("%v PNG: %v", r.Size(), err)
		}
	}
	for _, r := range []image.Rectangle{image.Rect(0, 0, 1, 60000), image.Rect(0, 0, 1500, 1000)} {
		var img RGB
		if err := Decode(encodeJPEG(t, image.NewYCbCr(r, image.YCbCrSubsampleRatio420)), &img); err != nil || img.W != r.Dx() || img.H != r.Dy() {
			t.Errorf("%v JPEG: %v", r.Size(), err)
		}
	}
}

// A Decoder is reused for every file of a loader goroutine: a bad JPEG must
// not spoil the good one after it.
func TestDecoderRecoversAfterBadJPEG(t *testing.T) {
	good := encodeJPEG(t, image.NewGray(image.Rect(0, 0, 20, 10)))
	var want RGB
	if err := Decode(good, &want); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		bad  []byte
	}{
		{"start of image only", []byte{0xff, 0xd8}},
		{"garbage after the marker", append([]byte{0xff, 0xd8}, "garbage garbage"...)},
		{"half the file", good[:len(good)/2]},
		{"cut in the tables", good[:40]},
		{"no scan", good[:200]},
		{"bomb", jpegWithSize(t, good, 65500, 65500)},
	} {
		d := NewDecoder()
		var img RGB
		if err := d.Decode(c.bad, &img); err == nil {
			t.Errorf("%s: decoded", c.name)
		}
		for k := range 2 {
			if err := d.Decode(good, &img); err != nil || !bytes.Equal(img.Pix, want.Pix) {
				t.Errorf("%s: good file %d after it: %v", c.name, k+1, err)
			}
		}
		d.Close()
	}
}

// A netpbm header within the limit but with its pixels missing costs the
// file's size, not the header's.
func TestDecodeNetpbmShortData(t *testing.T) {
	data := []byte("P6\n10000 10000\n65535\n0123456789")
	var img RGB
	var err error
	n := allocated(func() { err = Decode(data, &img) })
	if !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "10 bytes, want 600000000") {
		t.Errorf("short PPM: %v", err)
	}
	if n > 1<<20 {
		t.Errorf("short PPM: %d MB allocated to refuse it", n>>20)
	}
}

// GIF is not one of torchvision's image extensions nor ours: a GIF (here of
// many frames) is refused by its format, without decoding its frames.
func TestDecodeRefusesGIF(t *testing.T) {
	g := &gif.GIF{}
	pal := color.Palette{color.Black, color.White}
	for range 200 {
		g.Image = append(g.Image, image.NewPaletted(image.Rect(0, 0, 64, 64), pal))
		g.Delay = append(g.Delay, 1)
	}
	var b bytes.Buffer
	if err := gif.EncodeAll(&b, g); err != nil {
		t.Fatal(err)
	}
	var img RGB
	if err := Decode(b.Bytes(), &img); !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "unknown format") {
		t.Errorf("GIF: %v", err)
	}
}
