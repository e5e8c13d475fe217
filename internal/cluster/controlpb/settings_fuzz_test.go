package controlpb

import (
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/alexring/alexring/configs"
)

// FuzzLoadJobConfig feeds job files (--config) to the loader: it must not
// panic, and a config that passes Validate must reach the workers unchanged
// through the plan's settings (but for a worker's own), or a worker would
// train another job than the one checked. Its corpus is
// testdata/fuzz/FuzzLoadJobConfig; run it with
//
//	go test -run '^$' -fuzz '^FuzzLoadJobConfig$' -fuzztime 30s ./internal/cluster/controlpb/
func FuzzLoadJobConfig(f *testing.F) {
	for _, name := range []string{"demo", "flowers", "tiny"} {
		data, _, err := configs.Read(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := configs.Parse(data, "fuzz.yaml")
		if err != nil || cfg.Validate() != nil {
			return
		}
		b, err := proto.Marshal(NewJobSettings(cfg))
		if err != nil {
			t.Fatalf("a valid config %+v does not make a plan: %v", cfg, err)
		}
		var s JobSettings
		if err := proto.Unmarshal(b, &s); err != nil {
			t.Fatalf("the plan's settings do not decode: %v", err)
		}
		got := s.Job()
		if !reflect.DeepEqual(got, cfg) {
			t.Fatalf("the workers would get %+v for %+v", got, cfg)
		}
	})
}
