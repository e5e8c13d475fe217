package coordinator

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/alexring/alexring/configs"
	"github.com/alexring/alexring/worker"
)

// FuzzLoadJobConfig feeds job files (--config) to the loader: it must not
// panic, and a config that passes Validate must reach the workers unchanged
// through the plan's JSON, or a worker would train another job than the one
// checked. Its corpus is testdata/fuzz/FuzzLoadJobConfig; run it with
//
//	go test -run '^$' -fuzz '^FuzzLoadJobConfig$' -fuzztime 30s ./coordinator/
func FuzzLoadJobConfig(f *testing.F) {
	for _, name := range []string{"demo", "flowers", "tiny"} {
		data, _, err := configs.Read(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseJobConfig(data, "fuzz.yaml")
		if err != nil || cfg.Validate() != nil {
			return
		}
		js, err := json.Marshal(cfg)
		if err != nil {
			t.Fatalf("a valid config %+v does not make a plan: %v", cfg, err)
		}
		got := worker.DefaultConfig()
		if err := json.Unmarshal(js, &got); err != nil {
			t.Fatalf("the plan's config %s does not decode: %v", js, err)
		}
		if !reflect.DeepEqual(got, cfg) {
			t.Fatalf("the workers would get %+v for %+v", got, cfg)
		}
	})
}
