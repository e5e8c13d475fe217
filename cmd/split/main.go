// Command split turns a downloaded image set into the train/ and val/
// ImageFolder that the trainer reads: TensorFlow's flower_photos.tgz (or any
// .tgz/.tar or folder of SOURCE/<class>/<image>) into OUT/train/<class>/ and
// OUT/val/<class>/, the seed's 9:1 split per class. synth's sibling for real
// data; it downloads nothing.
//
//	split --out DIR [--val 0.1] [--seed 0] [--copy] SOURCE
//
// The split: in each class, the image names sorted; int(n * 0.1) of them for
// validation, drawn by Python's random.sample from one generator seeded once
// with random.seed(0), the classes in sorted order; the rest for training. A
// folder's files are hard-linked where possible (else copied), an archive's
// extracted; the source's LICENSE.txt goes to OUT/. Files that are not images
// (torchvision's extensions) are skipped and counted. OUT must be new or
// empty; a failure leaves nothing there.
//
// Exit codes: 0 written; 1 the source could not be split or written; 2 bad
// flags.
//
// Its flags do not come from ALEXRING_* variables, unlike the trainer's: an
// ALEXRING_SEED or ALEXRING_OUT meant for training would change the split.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/alexring/alexring/internal/cli"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("split", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := splitConfig{Val: 0.1, Seed: 0}
	out := fs.String("out", "", "folder to write train/ and val/ into; new or empty (required)")
	fs.Float64Var(&cfg.Val, "val", cfg.Val, "share of each class for validation: int(n * val) images")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "Python's random.seed for the draw; the same seed and files give the same split")
	fs.BoolVar(&cfg.Copy, "copy", false, "copy a folder's files even where hard links would do")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: split --out DIR [flags] SOURCE   (SOURCE: flower_photos.tgz, a .tar, or a folder of <class>/<image>)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *version {
		fmt.Fprintf(stdout, "split %s\n", cli.Version())
		return 0
	}
	if *out == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "split: give --out DIR and one SOURCE")
		fs.Usage()
		return 2
	}
	if !(cfg.Val > 0 && cfg.Val < 1) {
		fmt.Fprintf(stderr, "split: --val %v: want a share between 0 and 1\n", cfg.Val)
		return 2
	}
	src, err := scan(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "split:", err)
		return 1
	}
	splits, err := plan(src, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "split: %s: %v\n", src.root, err)
		return 1
	}
	res, err := write(src, splits, *out, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "split:", err)
		return 1
	}
	report(stdout, src, splits, res, *out, cfg)
	return 0
}

// report prints what was written: each class's counts, then the totals.
func report(stdout io.Writer, src *source, splits []classSplit, res result, out string, cfg splitConfig) {
	train, val := 0, 0
	for _, s := range splits {
		fmt.Fprintf(stdout, "%-12s %5d train %5d val\n", s.Class, len(s.Train), len(s.Val))
		train += len(s.Train)
		val += len(s.Val)
	}
	how := fmt.Sprintf("%d files extracted", res.Copied)
	if !src.archive {
		how = fmt.Sprintf("%d files hard-linked, %d copied", res.Linked, res.Copied)
	}
	fmt.Fprintf(stdout, "wrote %d classes, %d train + %d val images into %s (%s; seed %d, val %v)\n",
		len(splits), train, val, out, how, cfg.Seed, cfg.Val)
	if n := len(src.skipped); n > 0 {
		fmt.Fprintf(stdout, "skipped %d files that are not images, e.g. %s\n", n, src.skipped[0])
	}
}
