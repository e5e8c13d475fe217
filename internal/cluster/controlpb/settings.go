package controlpb

import (
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/alexring/alexring/configs"
)

// NewJobSettings are job's settings as a plan carries them.
func NewJobSettings(job configs.Job) *JobSettings {
	return &JobSettings{
		Data: job.Data, Out: job.Out, Resume: job.Resume, Variant: job.Variant, Init: job.Init, Freeze: job.Freeze,
		SaveFormat: job.SaveFormat, Normalize: job.Normalize,
		Epochs: int64(job.Epochs), Batch: int64(job.Batch), WorkerBatch: int64(job.WorkerBatchSize), Lr: job.LR, Seed: job.Seed,
		Dropout: job.Dropout, Augment: job.Augment, EvalBatch: int64(job.EvalBatch), SkipNonfinite: job.SkipNonFinite,
		LoaderGoroutines: int64(job.LoaderGoroutines),
		Ring:             &RingSettings{ChunkBytes: int64(job.Ring.ChunkBytes), Fp16: job.Ring.FP16, OpTimeout: durationpb.New(job.Ring.OpTimeout), Overlap: job.Ring.Overlap},
	}
}

// Job is the job that s describes, over the defaults (a worker sets its own
// settings over it: worker.JoinConfig). Numbers out of int's range saturate,
// and so fail the job's Validate.
func (s *JobSettings) Job() configs.Job {
	job := configs.DefaultJob()
	job.Data, job.Out, job.Resume, job.Variant, job.Init, job.Freeze = s.GetData(), s.GetOut(), s.GetResume(), s.GetVariant(), s.GetInit(), s.GetFreeze()
	job.SaveFormat, job.Normalize = s.GetSaveFormat(), s.GetNormalize()
	job.Epochs, job.Batch, job.WorkerBatchSize = toInt(s.GetEpochs()), toInt(s.GetBatch()), toInt(s.GetWorkerBatch())
	job.LR, job.Seed, job.Dropout, job.Augment = s.GetLr(), s.GetSeed(), s.GetDropout(), s.GetAugment()
	job.EvalBatch, job.SkipNonFinite, job.LoaderGoroutines = toInt(s.GetEvalBatch()), s.GetSkipNonfinite(), toInt(s.GetLoaderGoroutines())
	r := s.GetRing()
	job.Ring = configs.Ring{ChunkBytes: toInt(r.GetChunkBytes()), FP16: r.GetFp16(), OpTimeout: r.GetOpTimeout().AsDuration(), Overlap: r.GetOverlap()}
	return job
}

// toInt is v, saturated to int's range (on a 32-bit machine, too).
func toInt(v int64) int {
	const maxInt, minInt = int64(int(^uint(0) >> 1)), -int64(int(^uint(0)>>1)) - 1
	return int(min(max(v, minInt), maxInt))
}
