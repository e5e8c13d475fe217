//go:build purego

package sharding

import "errors"

// Without cgo, every JPEG goes through Go's image/jpeg.
type jpegDecoder struct{}

func newJPEGDecoder() *jpegDecoder { return &jpegDecoder{} }

var errUseGo = errors.New("sharding: pure-Go build")

func (*jpegDecoder) decode([]byte, *RGB, int) error { return errUseGo }
func (*jpegDecoder) close()                         {}
