//go:build !purego

package sharding

// With libjpeg-turbo, JPEGs decode to PIL's exact pixels.
const jpegTolerance = 0
