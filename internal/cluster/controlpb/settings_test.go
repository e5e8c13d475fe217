package controlpb

import (
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/alexring/alexring/configs"
)

// ownFields are the settings of configs.Job that are each worker's own, which
// the plans do not carry.
var ownFields = map[string]bool{"StepLog": true}

// Every setting of a job but a worker's own reaches the workers through the
// plan as it was: a field added to configs.Job and not to JobSettings fails
// here.
func TestJobSettingsCarryEveryJobSetting(t *testing.T) {
	var job configs.Job
	v := reflect.ValueOf(&job).Elem()
	var set func(v reflect.Value, path string)
	set = func(v reflect.Value, path string) {
		for i := range v.NumField() {
			f, name := v.Field(i), path+v.Type().Field(i).Name
			if ownFields[name] {
				continue
			}
			switch f.Kind() {
			case reflect.String:
				f.SetString(name)
			case reflect.Int, reflect.Int64:
				f.SetInt(int64(100 + i))
			case reflect.Uint64:
				f.SetUint(1<<63 + uint64(i))
			case reflect.Float64:
				f.SetFloat(0.25 + float64(i))
			case reflect.Bool:
				f.SetBool(true)
			case reflect.Struct:
				set(f, name+".")
			default:
				t.Fatalf("configs.Job.%s is a %s: teach JobSettings and this test about it", name, f.Kind())
			}
		}
	}
	set(v, "")
	job.Ring.OpTimeout = 90 * time.Second
	b, err := proto.Marshal(NewJobSettings(job))
	if err != nil {
		t.Fatal(err)
	}
	var s JobSettings
	if err := proto.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	want := job
	want.StepLog = configs.DefaultJob().StepLog
	if got := s.Job(); !reflect.DeepEqual(got, want) {
		t.Errorf("the workers get\n%+v\nfor\n%+v", got, want)
	}
	// Numbers beyond int's range saturate rather than wrap into valid ones.
	if got := (&JobSettings{Epochs: -1 << 63, Batch: 1<<63 - 1}).Job(); got.Epochs >= 0 || got.Batch <= 0 {
		t.Errorf("epochs %d batch %d", got.Epochs, got.Batch)
	}
	// No settings at all make a job that Validate refuses.
	if err := (*JobSettings)(nil).Job().Validate(); err == nil {
		t.Error("a plan without settings made a valid job")
	}
}
