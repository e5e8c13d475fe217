// Command synth writes the synthetic ImageFolder (coloured shapes on noisy
// backgrounds, five classes) that the demo and the tests train on.
//
//	synth --out DIR [--train 80] [--val 20] [--size 64] [--seed 1] [--jpeg]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/alexring/alexring/sharding"
)

func main() {
	cfg := sharding.SynthConfig{Train: 80, Val: 20, Size: 64, Seed: 1}
	out := flag.String("out", "", "folder to write train/ and val/ into (required)")
	flag.IntVar(&cfg.Train, "train", cfg.Train, "training images per class")
	flag.IntVar(&cfg.Val, "val", cfg.Val, "validation images per class")
	flag.IntVar(&cfg.Size, "size", cfg.Size, "image side in pixels")
	flag.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed: the same seed writes the same files")
	flag.BoolVar(&cfg.JPEG, "jpeg", false, "write JPEG instead of PNG")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "synth: --out is required")
		flag.Usage()
		os.Exit(2)
	}
	if err := sharding.Synthesize(*out, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "synth:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %d classes x (%d train + %d val) images of %dx%d into %s\n",
		len(sharding.SynthClasses), cfg.Train, cfg.Val, cfg.Size, cfg.Size, *out)
}
