// Command predict classifies images with a trained model on this machine, as
// the seed's predict.py does (package inference): Resize((224, 224)), ToTensor,
// Normalize(0.5, 0.5), softmax over the logits. A model trained with
// ImageNet's normalisation says so in its metadata, and its images get that
// Normalize instead.
//
//	predict [--model best.safetensors] [--class-indices class_indices.json] [--json] [--plot out.png] [--gpu K] IMAGE...
//
// Exit codes: 0 all images predicted; 1 some image could not be read or gave
// non-finite logits (the others are still predicted); 2 bad flags, model or
// class index.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/alexring/alexring/inference"
	"github.com/alexring/alexring/internal/cli"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("predict", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := inference.Config{Stdout: stdout, Stderr: stderr}
	fs.StringVar(&cfg.Model, "model", "best.safetensors", "model file: safetensors, or PyTorch's .pth/.pt state_dict (torch.save), as written by training or by PyTorch")
	fs.StringVar(&cfg.ClassIndices, "class-indices", "class_indices.json", "class names ({\"0\": name, ...}); if the default is missing, the model's own names")
	fs.BoolVar(&cfg.JSON, "json", false, "print one JSON object per image")
	fs.StringVar(&cfg.Plot, "plot", "", "write a PNG of each image beside a bar chart of its class probabilities")
	fs.IntVar(&cfg.GPU, "gpu", -1, "GPU to predict on (a build with -tags gpu); -1 is the CPU")
	fs.StringVar(&cfg.Conv, "conv", "auto", "the GPU's convolution: auto, cudnn or gemm")
	fs.StringVar(&cfg.Normalize, "normalize", "", "the images' mean and std after ToTensor: seed (0.5, 0.5) or imagenet (default: the model's metadata; seed for a .pth, which has none)")
	given, done, code := cli.ParseGiven(fs, args)
	if done {
		return code
	}
	if cfg.Images = fs.Args(); len(cfg.Images) == 0 {
		fmt.Fprintln(stderr, "predict: no images given (usage: predict [flags] IMAGE...)")
		fs.Usage()
		return 2
	}
	cfg.ClassIndicesExplicit = given["class-indices"] != ""
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed, err := inference.Run(ctx, cfg)
	if code := cli.Exit(stderr, "predict", err); code != 0 || failed == 0 {
		return code
	}
	return 1
}
