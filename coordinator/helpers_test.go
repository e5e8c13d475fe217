package coordinator

import (
	"errors"
	"os"
	"testing"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/internal/cluster/controlpb"
)

// planJob is the job that plan p tells its worker to train (without the
// worker's own settings).
func planJob(p *controlpb.JobPlan) (configs.Job, error) {
	if p.GetSettings() == nil {
		return configs.Job{}, errors.New("the plan carries no job settings")
	}
	return p.Settings.Job(), nil
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
