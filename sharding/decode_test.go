package sharding

import (
	"os"
	"strings"
	"testing"
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
