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

// Decoder turns image files into RGB; it keeps native state (libjpeg-turbo),
// so use one per goroutine and Close it.
type Decoder struct {
	jpeg *jpegDecoder
}

// NewDecoder returns a Decoder.
func NewDecoder() *Decoder { return &Decoder{jpeg: newJPEGDecoder()} }

// Close releases the native state.
func (d *Decoder) Close() { d.jpeg.close() }

// Decode reads an image file's bytes into dst (reusing its pixel buffer) as RGB,
// the way PIL's convert("RGB") does: JPEGs through libjpeg-turbo as PIL
// decodes them, grayscale replicated, CMYK inverted through K, palettes looked
// up, alpha dropped (not blended), 16-bit colour reduced to its high byte and
// 16-bit gray clipped at 255.
func (d *Decoder) Decode(data []byte, dst *RGB) error {
	if bytes.HasPrefix(data, []byte{0xff, 0xd8}) {
		if err := d.jpeg.decode(data, dst); !errors.Is(err, errUseGo) {
			return err
		}
	}
	return decodeGo(data, dst)
}

// Decode is a one-off Decoder's Decode.
func Decode(data []byte, dst *RGB) error {
	d := NewDecoder()
	defer d.Close()
	return d.Decode(data, dst)
}

func decodeGo(data []byte, dst *RGB) error {
	img, err := decodeAny(data)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDecode, err)
	}
	b := img.Bounds()
	if b.Dx() < 1 || b.Dy() < 1 {
		return fmt.Errorf("%w: empty image %dx%d", ErrDecode, b.Dx(), b.Dy())
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

func decodeAny(data []byte) (image.Image, error) {
	r := bytes.NewReader(data)
	switch {
	case bytes.HasPrefix(data, []byte{0xff, 0xd8}):
		return jpeg.Decode(r)
	case bytes.HasPrefix(data, []byte("\x89PNG")):
		return png.Decode(r)
	case bytes.HasPrefix(data, []byte("BM")):
		return bmp.Decode(r)
	case bytes.HasPrefix(data, []byte("II*\x00")), bytes.HasPrefix(data, []byte("MM\x00*")):
		return tiff.Decode(r)
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		return webp.Decode(r)
	case len(data) >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6'):
		return decodeNetpbm(data)
	case len(data) == 0:
		return nil, errors.New("empty file")
	}
	return nil, errors.New("unknown format (not JPEG, PNG, BMP, TIFF, WebP, PGM or PPM)")
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

// decodeNetpbm reads binary PGM (P5) and PPM (P6), 8 or 16 bits.
func decodeNetpbm(data []byte) (image.Image, error) {
	r := bufio.NewReader(bytes.NewReader(data))
	magic := make([]byte, 2)
	io.ReadFull(r, magic)
	var vals [3]int
	for k := 0; k < 3; k++ {
		tok, err := pnmToken(r)
		if err != nil {
			return nil, fmt.Errorf("netpbm header: %w", err)
		}
		if vals[k], err = strconv.Atoi(tok); err != nil || vals[k] < 1 {
			return nil, fmt.Errorf("netpbm header: bad number %q", tok)
		}
	}
	w, h, maxval := vals[0], vals[1], vals[2]
	if maxval > 65535 || w > 1<<15 || h > 1<<15 {
		return nil, fmt.Errorf("netpbm: %dx%d maxval %d out of range", w, h, maxval)
	}
	ch := 3
	if magic[1] == '5' {
		ch = 1
	}
	bps := 1
	if maxval > 255 {
		bps = 2
	}
	raw := make([]byte, w*h*ch*bps)
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, fmt.Errorf("netpbm: pixel data: %w", err)
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
