package configs

// The files of a job's output folder (--out). Rank 0 writes the model and the
// training state; the coordinator writes the rest (and class_indices.json
// too, before any worker starts).
const (
	BestFile         = "best.safetensors"
	BestPthFile      = "best.pth" // with --save-format pth or both
	StateFile        = "state.safetensors"
	ClassIndicesFile = "class_indices.json"
	JobIDFile        = "job_id" // the job's id, for coordinator --resume
	MetricsFile      = "metrics.csv"
	CurvesFile       = "training.png"
)
