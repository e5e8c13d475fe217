package worker

import (
	"fmt"
	"strings"

	"github.com/alexring/alexring/alexnet"
	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/sharding"
)

// A rank trains a configs.Job (its schema, defaults and checks are there);
// what of it needs the model is here.

// normalization is the job's parsed Normalize (the seed's when it does not
// parse: Validate reports that).
func normalization(c configs.Job) sharding.Normalization {
	n, _ := sharding.ParseNormalization(c.Normalize)
	return n
}

// adamConfig is the job's optimiser.
func adamConfig(c configs.Job) alexnet.AdamConfig {
	a := alexnet.DefaultAdam()
	a.LR = c.LR
	return a
}

// hostMemory is what this machine has left (a variable for the tests).
var hostMemory = alexnet.HostMemory

// loaderPrefetch is how many batches a loader decodes ahead (sharding's
// default), each a buffer of the batch's images.
const loaderPrefetch = 2

// Footprint estimates the host memory of one rank of job c that trains batch
// images a step: the parameter-sized vectors, the graphs (on the CPU: a GPU
// holds its own in device memory) and the loaders' batch buffers.
func Footprint(c configs.Job, spec alexnet.Spec, batch int, onCPU bool) alexnet.Footprint {
	f := alexnet.CPUFootprint(spec, batch, c.EvalBatch)
	if !onCPU {
		f.Train, f.Eval = 0, 0
	}
	per := spec.ImageBytes() + 16 // an image, its label and index
	f.Train += loaderPrefetch * int64(batch) * per
	f.Eval += loaderPrefetch * int64(c.EvalBatch) * per
	return f
}

// CheckMemory refuses a batch per rank, or an evaluation batch, whose
// estimated memory is more than this machine has left (MemAvailable, or a
// container's cgroup limit): ranks such ranks on this machine, one of which
// validates. The error names the flag, the estimate and what is available.
// Where the machine's memory cannot be read, nothing is refused.
func CheckMemory(c configs.Job, spec alexnet.Spec, batch int, onCPU bool, ranks int) error {
	f := Footprint(c, spec, batch, onCPU)
	per := f
	per.Eval = 0
	need := alexnet.AddSat(alexnet.MulSat(int64(ranks), per.Total()), f.Eval)
	avail, from, err := hostMemory()
	if err != nil || need <= avail {
		return nil
	}
	flag, other := fmt.Sprintf("--batch %d", c.Batch), fmt.Sprintf("--eval-batch %d", c.EvalBatch)
	if c.WorkerBatchSize > 0 {
		flag = fmt.Sprintf("worker_batch %d", c.WorkerBatchSize)
	}
	if f.Eval > f.Train {
		flag, other = other, flag
	}
	who := fmt.Sprintf("a %s model training %d images a step", spec.Variant, batch)
	if ranks > 1 {
		who = fmt.Sprintf("%d workers on this machine, each training %d images a step (the %s model)", ranks, batch, spec.Variant)
	}
	where := "on the CPU"
	if !onCPU {
		where = "in host memory (the graphs are on the GPU)"
	}
	return configs.BadInput(fmt.Errorf("%s: %s %s need about %s (%v), more than the %s available (%s); lower %s (or %s)",
		flag, who, where, alexnet.FormatBytes(need), f, alexnet.FormatBytes(avail), from, strings.Fields(flag)[0], strings.Fields(other)[0]))
}

// CheckLocalMemory refuses world CPU ranks of job on this machine, of a
// dataset of classes classes and valImages validation images, that together
// need more memory than it has left (CheckMemory). coordinator --local checks
// its workers with it before any starts (coordinator.Config.LocalMemory).
func CheckLocalMemory(job configs.Job, classes, valImages, world int) error {
	spec, err := alexnet.NewSpec(job.Variant, classes)
	if err != nil {
		return configs.BadInput(fmt.Errorf("--variant: %w", err))
	}
	job.EvalBatch = min(job.EvalBatch, valImages) // as the workers clamp it
	return CheckMemory(job, spec, job.WorkerBatch(world), true, world)
}
