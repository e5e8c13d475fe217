package coordinator

import (
	"errors"
	"strings"
	"testing"

	"github.com/alexring/alexring/configs"
)

// save_format is a job setting: the shipped flowers config names it, and a bad
// value is bad input naming the flag.
func TestJobConfigSaveFormat(t *testing.T) {
	cfg, err := configs.Load("flowers")
	if err != nil || cfg.SaveFormat != "both" {
		t.Fatalf("flowers: save_format %q, %v", cfg.SaveFormat, err)
	}
	cfg, err = configs.Parse([]byte("data: d\nsave_format: pth\n"), "test")
	if err != nil || cfg.SaveFormat != "pth" || cfg.Validate() != nil {
		t.Fatalf("save_format pth: %q, %v, %v", cfg.SaveFormat, err, cfg.Validate())
	}
	cfg.SaveFormat = "pickle"
	if err := cfg.Validate(); !errors.Is(err, configs.ErrBadInput) || !strings.Contains(err.Error(), "--save-format") {
		t.Errorf("save_format pickle: %v", err)
	}
}
