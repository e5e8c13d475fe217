// Package worker is one rank's training: the loop from a batch of images to an
// Adam step, the same for a world of one (--standalone) and for rank r of N.
//
// Where a step goes, in order:
//
//	sharding.Plan.Shard(rank)        this epoch's sample indices (the coordinator's plan, checked)
//	sharding.Loader.Next()           decoded, augmented float32 batch (prefetched by goroutines)
//	alexnet.Backend.Gradient(...)    forward, softmax cross-entropy, backward: the flat gradient
//	                                 (the CPU graphs, alexnet.CPU, or a GPU, alexnet/gpu)
//	Collective.AllReduceAvg(grad)    the ring all-reduce (allreduce.Ring) averages it over the
//	                                 ranks, with a NaN flag per rank; with ring.overlap, or on
//	                                 a GPU, the classifier's part starts during the backward
//	                                 pass (Collective.StartAllReduceAvg), as soon as it is final
//	alexnet.Backend.Update(grad)     Adam, identical on every rank, so the replicas stay bit-identical
//
// The trainer keeps the host copy of the state (parameters, Adam's moments);
// a GPU backend keeps its own and the trainer asks for it (Download) at each
// epoch's end, before the checksum and the checkpoints, and hands it back
// (Upload) after a state broadcast. A world of one leaves the gradient in the
// backend: nothing to average.
//
// One vector crosses the ring per step (stepVector in step.go): a flag per
// rank, set where its gradient was not finite, then the gradient, so that one
// all-reduce both averages the gradient and tells every rank whether any
// rank's was not finite; a step with one is stopped on, or with
// skip_nonfinite skipped, on every rank alike. The trainer times the phases
// (data wait, forward, backward, all-reduce, optimiser; forward and backward
// split by the backend's alexnet.Hooks.LossComputed) for the metrics and the
// timeline (telemetry.go).
//
// After each epoch every rank reports a checksum of its parameters; rank 0 also
// validates on the whole val split and writes best.safetensors and the training
// state.
//
// Where each part lives:
//
//	step.go        the step: batch -> gradient -> all-reduce (flags and gradient) -> check -> Adam
//	epoch.go       an epoch's bookkeeping: the plan (checked), the loader, the sums, the checksum
//	evaluate.go    rank 0's validation and best model
//	trainer.go     the Trainer: construction, its Controller (plan source, reporter, telemetry,
//	               given to NewTrainer), state restore and broadcast, the epochs loop, the state file
//	telemetry.go   the step record, Prometheus series and timeline events
//	standalone.go  a world of one (its Controller prints the seed's epoch lines)
//	distributed.go a rank of a job: joins the coordinator, whose plans and reports are its Controller
//	command.go     the worker command (cmd/worker's flags): the job's flags a joined worker refuses,
//	               its own settings (data, eval batch, loader goroutines, step logs) it applies
//	config.go      what of the job (a configs.Job, whose schema and checks are configs') needs the
//	               model: the memory estimate, Adam's settings, the normalisation
package worker
