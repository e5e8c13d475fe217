package cli

import (
	"reflect"
	"strings"
	"testing"

	"github.com/alexring/alexring/configs"
)

// Every job flag's refusal names the job file's key of that setting: a key of
// configs.Job's YAML.
func TestJobFlagsAreJobFileKeys(t *testing.T) {
	keys := map[string]bool{}
	job := reflect.TypeOf(configs.Job{})
	for i := range job.NumField() {
		keys[strings.Split(job.Field(i).Tag.Get("yaml"), ",")[0]] = true
	}
	for _, name := range JobFlags {
		if !keys[yamlKey(name)] {
			t.Errorf("job flag --%s: the job file has no key %q", name, yamlKey(name))
		}
	}
}
