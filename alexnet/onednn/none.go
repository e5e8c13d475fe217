//go:build purego || nodnnl

package onednn

import (
	"errors"
	"fmt"
)

// Available says whether this build has the binding: not this one.
const Available = false

// ErrNotAvailable is every call's error in a build without oneDNN.
var ErrNotAvailable = errors.New("onednn: this build has no oneDNN (built with -tags purego or nodnnl)")

// Info is what runs the convolutions.
type Info struct {
	Version, ISA string
	Threads      int
	Runtime      string
}

// Runtime fails: there is no oneDNN.
func Runtime() (Info, error) { return Info{}, ErrNotAvailable }

// Memory is zero: there is no oneDNN.
func Memory() (arena, kept int64) { return 0, 0 }

// ConvMemory is a layer's C memory (see the oneDNN build).
type ConvMemory struct{ Kept, Temp, Scratch int64 }

// Footprint fails: there is no oneDNN.
func Footprint([]Shape) (ConvMemory, error) { return ConvMemory{}, ErrNotAvailable }

// Shape is one convolution (see the oneDNN build).
type Shape struct {
	Batch, In, Out, Side, OutSide, Kernel, Stride, Pad int
	Train, DiffSrc, Plain                              bool
}

func (s Shape) String() string {
	return fmt.Sprintf("%dx%dx%d->%dx%d k%d s%d p%d b%d", s.In, s.Side, s.Side, s.Out, s.OutSide, s.Kernel, s.Stride, s.Pad, s.Batch)
}

// Conv is never made in this build.
type Conv struct {
	Impl, Layouts [3]string
	Reorders      int
	Mem           ConvMemory
}

// The primitives, in Impl's order.
const (
	Forward = iota
	BackwardData
	BackwardWeights
)

// NewConv fails: there is no oneDNN.
func NewConv(Shape) (*Conv, error) { return nil, ErrNotAvailable }

func (c *Conv) Shape() Shape                                  { return Shape{} }
func (c *Conv) Close()                                        {}
func (c *Conv) Forward(x, w, b, y []float32) error            { return ErrNotAvailable }
func (c *Conv) BackwardData(w, dy, dx []float32) error        { return ErrNotAvailable }
func (c *Conv) BackwardWeights(x, dy, dw, db []float32) error { return ErrNotAvailable }
