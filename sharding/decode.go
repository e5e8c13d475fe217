package sharding

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"strconv"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"
)

// RGB is an 8-bit RGB image, rows of interleaved R, G, B: what PIL's
// convert("RGB") gives, and what the transforms take.
type RGB struct {
	W, H int
	Pix  []uint8 // len 3*W*H
}

// ErrDecode marks a file that is not a readable image.
var ErrDecode = errors.New("sharding: cannot decode image")

// MaxPixels is the largest image, width times height, that is decoded: the
// most Pillow opens (it raises DecompressionBombError beyond 2*MAX_IMAGE_PIXELS).
// Every decoder reads the size from the header and refuses a larger image
// before allocating its pixels, so a small file claiming a huge size costs
// nothing. A JPEG counts in whole MCUs (8 to 32 pixels a side), since its
// decoders allocate those.
const MaxPixels = 2 * 89478485

// MaxFileBytes is the largest image file that is read: the largest
// uncompressed image within MaxPixels (16-bit RGBA, 8 bytes a pixel) and room
// for metadata. Files are read whole into memory.
const MaxFileBytes = 8*MaxPixels + 64<<20

// Decoder turns image files into RGB; it keeps native state (libjpeg-turbo),
// so use one per goroutine and Close it.
type Decoder struct {
	jpeg      *jpegDecoder
	maxPixels int
}

// NewDecoder returns a Decoder that refuses images beyond MaxPixels.
func NewDecoder() *Decoder { return newDecoder(MaxPixels) }

// newDecoder takes another limit, so that the fuzz test can check that no
// input allocates more than a small limit allows.
func newDecoder(maxPixels int) *Decoder {
	return &Decoder{jpeg: newJPEGDecoder(), maxPixels: maxPixels}
}

// Close releases the native state.
func (d *Decoder) Close() { d.jpeg.close() }

// Decode reads an image file's bytes into dst (reusing its pixel buffer) as RGB,
// the way PIL's convert("RGB") does: JPEGs through libjpeg-turbo as PIL
// decodes them, grayscale replicated, CMYK inverted through K, palettes looked
// up, alpha dropped (not blended), 16-bit colour reduced to its high byte and
// 16-bit gray clipped at 255. An image beyond MaxPixels is an error.
func (d *Decoder) Decode(data []byte, dst *RGB) error {
	if bytes.HasPrefix(data, []byte{0xff, 0xd8}) {
		if err := checkJPEGSize(data, d.maxPixels); err != nil {
			return fmt.Errorf("%w: %w", ErrDecode, err)
		}
		if err := d.jpeg.decode(data, dst, d.maxPixels); !errors.Is(err, errUseGo) {
			return err
		}
	}
	return decodeGo(data, dst, d.maxPixels)
}

// Decode is a one-off Decoder's Decode.
func Decode(data []byte, dst *RGB) error {
	d := NewDecoder()
	defer d.Close()
	return d.Decode(data, dst)
}

// checkSize refuses an empty image or one of more than limit pixels.
func checkSize(format string, w, h, limit int) error {
	if w < 1 || h < 1 {
		return fmt.Errorf("empty %s image %dx%d", format, w, h)
	}
	if w > limit/h {
		return fmt.Errorf("%s image of %dx%d pixels is over the limit of %d pixels (sharding.MaxPixels)", format, w, h, limit)
	}
	return nil
}

// A format reads its header alone (config) and the whole image (decode).
type format struct {
	name   string
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}

func formatOf(data []byte) (format, error) {
	switch {
	case bytes.HasPrefix(data, []byte{0xff, 0xd8}):
		return format{"JPEG", jpeg.DecodeConfig, jpeg.Decode}, nil
	case bytes.HasPrefix(data, []byte("\x89PNG")):
		return format{"PNG", png.DecodeConfig, png.Decode}, nil
	case bytes.HasPrefix(data, []byte("BM")):
		return format{"BMP", bmp.DecodeConfig, bmp.Decode}, nil
	case bytes.HasPrefix(data, []byte("II*\x00")), bytes.HasPrefix(data, []byte("MM\x00*")):
		return format{"TIFF", tiff.DecodeConfig, tiff.Decode}, nil
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		return format{"WebP", webp.DecodeConfig, webp.Decode}, nil
	case len(data) >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6'):
		return format{"netpbm", netpbmConfig, decodeNetpbm}, nil
	case len(data) == 0:
		return format{}, errors.New("empty file")
	}
	return format{}, errors.New("unknown format (not JPEG, PNG, BMP, TIFF, WebP, PGM or PPM)")
}

func decodeGo(data []byte, dst *RGB, limit int) error {
	f, err := formatOf(data)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDecode, err)
	}
	cfg, err := f.config(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: %s header: %w", ErrDecode, f.name, err)
	}
	if err := checkSize(f.name, cfg.Width, cfg.Height, limit); err != nil {
		return fmt.Errorf("%w: %w", ErrDecode, err)
	}
	img, err := f.decode(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDecode, f.name, err)
	}
	// The header was checked; this guards the RGB buffer against a decoder
	// whose image is not the size its header said.
	b := img.Bounds()
	if b.Dx() != cfg.Width || b.Dy() != cfg.Height {
		return fmt.Errorf("%w: %s header says %dx%d but the image is %dx%d", ErrDecode, f.name, cfg.Width, cfg.Height, b.Dx(), b.Dy())
	}
	dst.W, dst.H = b.Dx(), b.Dy()
	n := 3 * dst.W * dst.H
	if cap(dst.Pix) < n {
		dst.Pix = make([]uint8, n)
	}
	dst.Pix = dst.Pix[:n]
	toRGB(img, dst)
	return nil
}

// checkJPEGSize reads the frame header (SOF) and refuses a JPEG whose size,
// padded to whole MCUs as both decoders allocate it, is beyond limit. A
// header it cannot find is left for the decoder to report.
func checkJPEGSize(data []byte, limit int) error {
	for i := 2; i+4 <= len(data); {
		if data[i] != 0xff {
			return nil
		}
		m := data[i+1]
		if m == 0xff { // fill byte
			i++
			continue
		}
		if m == 0x01 || m >= 0xd0 && m <= 0xd8 { // markers without a length
			i += 2
			continue
		}
		if m == 0xd9 || m == 0xda { // EOI or SOS before any SOF
			return nil
		}
		n := int(data[i+2])<<8 | int(data[i+3])
		seg := data[i+4 : min(len(data), i+2+max(n, 2))]
		if m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc {
			if len(seg) < 6 {
				return nil
			}
			h := int(seg[1])<<8 | int(seg[2])
			w := int(seg[3])<<8 | int(seg[4])
			hmax, vmax := 1, 1
			for c := 0; c < int(seg[5]) && 6+3*c+1 < len(seg); c++ {
				hv := seg[6+3*c+1]
				hmax, vmax = max(hmax, int(hv>>4)), max(vmax, int(hv&15))
			}
			if h == 0 { // the height comes later (DNL); the decoders refuse it
				return nil
			}
			mw, mh := 8*hmax, 8*vmax
			pw, ph := (w+mw-1)/mw*mw, (h+mh-1)/mh*mh
			if err := checkSize("JPEG", w, h, limit); err != nil {
				return err
			}
			if pw > limit/ph {
				return fmt.Errorf("JPEG image of %dx%d pixels is %dx%d in whole MCUs, over the limit of %d pixels (sharding.MaxPixels)", w, h, pw, ph, limit)
			}
			return nil
		}
		i += 2 + n
	}
	return nil
}

func toRGB(img image.Image, dst *RGB) {
	b := img.Bounds()
	p := dst.Pix
	i := 0
	switch m := img.(type) {
	case *image.YCbCr:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				yi, ci := m.YOffset(x, y), m.COffset(x, y)
				p[i], p[i+1], p[i+2] = color.YCbCrToRGB(m.Y[yi], m.Cb[ci], m.Cr[ci])
				i += 3
			}
		}
	case *image.Gray:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			row := m.Pix[(y-b.Min.Y)*m.Stride:]
			for x := 0; x < b.Dx(); x++ {
				v := row[x]
				p[i], p[i+1], p[i+2] = v, v, v
				i += 3
			}
		}
	case *image.RGBA:
		// Opaque RGBA is what most decoders give; with alpha it is premultiplied
		// and un-premultiplying is not exact, so only opaque pixels take this path.
		for y := b.Min.Y; y < b.Max.Y; y++ {
			row := m.Pix[(y-b.Min.Y)*m.Stride:]
			for x := 0; x < b.Dx(); x++ {
				px := row[4*x : 4*x+4]
				if px[3] == 0xff {
					p[i], p[i+1], p[i+2] = px[0], px[1], px[2]
				} else {
					c := color.NRGBAModel.Convert(color.RGBA{px[0], px[1], px[2], px[3]}).(color.NRGBA)
					p[i], p[i+1], p[i+2] = c.R, c.G, c.B
				}
				i += 3
			}
		}
	case *image.NRGBA:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			row := m.Pix[(y-b.Min.Y)*m.Stride:]
			for x := 0; x < b.Dx(); x++ {
				p[i], p[i+1], p[i+2] = row[4*x], row[4*x+1], row[4*x+2]
				i += 3
			}
		}
	case *image.Paletted:
		pal := make([][3]uint8, len(m.Palette))
		for k, c := range m.Palette {
			pal[k] = rgbOf(c)
		}
		for y := b.Min.Y; y < b.Max.Y; y++ {
			row := m.Pix[(y-b.Min.Y)*m.Stride:]
			for x := 0; x < b.Dx(); x++ {
				c := pal[row[x]]
				p[i], p[i+1], p[i+2] = c[0], c[1], c[2]
				i += 3
			}
		}
	default:
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				c := rgbOf(m.At(x, y))
				p[i], p[i+1], p[i+2] = c[0], c[1], c[2]
				i += 3
			}
		}
	}
}

// rgbOf is one pixel as PIL's convert("RGB") sees it: the colour without its
// alpha (not premultiplied), 16-bit channels by their high byte.
func rgbOf(c color.Color) [3]uint8 {
	switch v := c.(type) {
	case color.NRGBA:
		return [3]uint8{v.R, v.G, v.B}
	case color.NRGBA64:
		return [3]uint8{uint8(v.R >> 8), uint8(v.G >> 8), uint8(v.B >> 8)}
	case color.Gray16:
		// PIL opens 16-bit grayscale as 32-bit integers ("I") and clips them to
		// 255 when converting, unlike 16-bit colour, which it reads by high byte.
		g := uint8(min(v.Y, 255))
		return [3]uint8{g, g, g}
	case color.CMYK:
		r, g, b := color.CMYKToRGB(v.C, v.M, v.Y, v.K)
		return [3]uint8{r, g, b}
	}
	n := color.NRGBA64Model.Convert(c).(color.NRGBA64)
	return [3]uint8{uint8(n.R >> 8), uint8(n.G >> 8), uint8(n.B >> 8)}
}

// netpbmHeader reads a binary PGM (P5) or PPM (P6) header: channels, width,
// height and maxval.
func netpbmHeader(r *bufio.Reader) (ch, w, h, maxval int, err error) {
	magic := make([]byte, 2)
	if _, err := io.ReadFull(r, magic); err != nil || magic[0] != 'P' || magic[1] != '5' && magic[1] != '6' {
		return 0, 0, 0, 0, errors.New("netpbm header: not P5 or P6")
	}
	var vals [3]int
	for k := 0; k < 3; k++ {
		tok, err := pnmToken(r)
		if err != nil {
			return 0, 0, 0, 0, fmt.Errorf("netpbm header: %w", err)
		}
		if vals[k], err = strconv.Atoi(tok); err != nil || vals[k] < 1 {
			return 0, 0, 0, 0, fmt.Errorf("netpbm header: bad number %q", tok)
		}
	}
	if vals[2] > 65535 {
		return 0, 0, 0, 0, fmt.Errorf("netpbm header: maxval %d out of range", vals[2])
	}
	ch = 3
	if magic[1] == '5' {
		ch = 1
	}
	return ch, vals[0], vals[1], vals[2], nil
}

func netpbmConfig(r io.Reader) (image.Config, error) {
	_, w, h, _, err := netpbmHeader(bufio.NewReader(r))
	return image.Config{ColorModel: color.NRGBAModel, Width: w, Height: h}, err
}

// decodeNetpbm reads binary PGM (P5) and PPM (P6), 8 or 16 bits.
func decodeNetpbm(r io.Reader) (image.Image, error) {
	br := bufio.NewReader(r)
	ch, w, h, maxval, err := netpbmHeader(br)
	if err != nil {
		return nil, err
	}
	bps := 1
	if maxval > 255 {
		bps = 2
	}
	// decodeGo has checked w*h against the limit, so want cannot overflow.
	// Read what is there before allocating what the header promises, so that a
	// short file claiming a large image costs only its own size.
	want := w * h * ch * bps
	raw, err := io.ReadAll(io.LimitReader(br, int64(want)))
	if err != nil {
		return nil, fmt.Errorf("netpbm: pixel data: %w", err)
	}
	if len(raw) < want {
		return nil, fmt.Errorf("netpbm: pixel data: %d bytes, want %d: %w", len(raw), want, io.ErrUnexpectedEOF)
	}
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < w*h; i++ {
		for c := 0; c < 3; c++ {
			k := i*ch + c%ch
			v := int(raw[k*bps])
			if bps == 2 {
				v = v<<8 | int(raw[k*bps+1])
			}
			img.Pix[4*i+c] = uint8(v * 255 / maxval)
		}
		img.Pix[4*i+3] = 0xff
	}
	return img, nil
}

func pnmToken(r *bufio.Reader) (string, error) {
	var tok []byte
	for {
		c, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		switch {
		case c == '#':
			r.ReadString('\n')
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if len(tok) > 0 {
				return string(tok), nil
			}
		default:
			tok = append(tok, c)
		}
	}
}
