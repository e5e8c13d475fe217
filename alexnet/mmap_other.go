//go:build !linux && !darwin && !freebsd

package alexnet

import (
	"errors"
	"os"
)

// mapFile is not available here: MapSafetensors reads the file instead.
func mapFile(*os.File, int64) ([]byte, func() error, error) {
	return nil, nil, errors.New("no mmap on this platform")
}
