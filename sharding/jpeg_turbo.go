//go:build !purego

package sharding

/*
#cgo LDFLAGS: -lturbojpeg
#include <stdlib.h>
#include <turbojpeg.h>

// decode_rgb decompresses a JPEG into packed RGB with libjpeg-turbo's defaults
// (accurate integer IDCT, fancy upsampling): the same library and settings as
// PIL, hence the same pixels. It returns 0, 1 when the caller should use
// another decoder (CMYK/YCCK), or -1 on a bad file.
static int decode_rgb(tjhandle h, const unsigned char *buf, unsigned long size,
                      unsigned char *dst, int w, int hgt) {
	return tjDecompress2(h, buf, size, dst, w, 0, hgt, TJPF_RGB, 0) == 0 ? 0 : -1;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"
)

// jpegDecoder wraps a turbojpeg handle; one per goroutine.
type jpegDecoder struct {
	h C.tjhandle
}

func newJPEGDecoder() *jpegDecoder {
	return &jpegDecoder{h: C.tjInitDecompress()}
}

// errUseGo asks for the pure-Go decoder (colour spaces turbojpeg cannot
// turn into RGB).
var errUseGo = errors.New("sharding: not a YCbCr or grayscale JPEG")

// decode fills dst with the JPEG in data as RGB, refusing more than limit
// pixels.
func (d *jpegDecoder) decode(data []byte, dst *RGB, limit int) error {
	if d.h == nil {
		return errUseGo
	}
	err := d.decodeTJ(data, dst, limit)
	if err != nil && !errors.Is(err, errUseGo) {
		// A failed call can leave the handle in a state where the next good
		// file fails too ("0x0", or the same error again): start afresh.
		C.tjDestroy(d.h)
		d.h = C.tjInitDecompress()
	}
	return err
}

func (d *jpegDecoder) decodeTJ(data []byte, dst *RGB, limit int) error {
	var w, h, subsamp, cs C.int
	ptr := (*C.uchar)(unsafe.Pointer(unsafe.SliceData(data)))
	if C.tjDecompressHeader3(d.h, ptr, C.ulong(len(data)), &w, &h, &subsamp, &cs) != 0 {
		return fmt.Errorf("%w: %s", ErrDecode, C.GoString(C.tjGetErrorStr2(d.h)))
	}
	if cs == C.TJCS_CMYK || cs == C.TJCS_YCCK {
		return errUseGo
	}
	if err := checkSize("JPEG", int(w), int(h), limit); err != nil {
		return fmt.Errorf("%w: %w", ErrDecode, err)
	}
	dst.W, dst.H = int(w), int(h)
	n := 3 * dst.W * dst.H
	if cap(dst.Pix) < n {
		dst.Pix = make([]uint8, n)
	}
	dst.Pix = dst.Pix[:n]
	if C.decode_rgb(d.h, ptr, C.ulong(len(data)), (*C.uchar)(unsafe.Pointer(unsafe.SliceData(dst.Pix))), w, h) != 0 {
		msg := C.GoString(C.tjGetErrorStr2(d.h))
		// PIL shrugs off libjpeg's warnings but refuses a truncated file.
		if C.tjGetErrorCode(d.h) == C.TJERR_WARNING && !strings.Contains(msg, "Premature end") {
			return nil
		}
		return fmt.Errorf("%w: %s", ErrDecode, msg)
	}
	return nil
}

func (d *jpegDecoder) close() {
	if d.h != nil {
		C.tjDestroy(d.h)
		d.h = nil
	}
}
