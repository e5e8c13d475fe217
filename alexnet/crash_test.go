package alexnet

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The child side of TestKillDuringCheckpointWrite: write the seed model's
// training state (175 MB) over and over, epoch after epoch, until killed;
// it prints "written" once the first file has landed.
func TestMain(m *testing.M) {
	if path := os.Getenv("ALEXRING_CHECKPOINT_WRITER"); path != "" {
		spec, _ := NewSpec("seed", 5)
		p := NewParams(spec)
		p.Init(1)
		adam, _ := NewAdam(DefaultAdam(), len(p.Flat))
		for epoch := 1; ; epoch++ {
			if err := SaveTrainState(path, &TrainState{Params: p, Adam: adam, Epoch: epoch, Classes: []string{"a", "b", "c", "d", "e"}}); err != nil {
				os.Exit(3)
			}
			if epoch == 1 {
				fmt.Println("written")
			}
		}
	}
	os.Exit(m.Run())
}

// SIGKILL at random moments of a checkpoint write: the file that is there
// always loads whole, holding one of the epochs written.
func TestKillDuringCheckpointWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 175 MB files")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "state.safetensors")
	rng := rand.New(rand.NewPCG(7, 7))
	for round := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "ALEXRING_CHECKPOINT_WRITER="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Let the first file land, then kill at a random point of a later write.
		if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "written\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: the writer printed %q (%v), not that its first file landed", round, line, err)
		}
		// Stays: the kill's random moment within a write is the test's point.
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		st, err := LoadTrainState(path)
		if err != nil {
			t.Fatalf("round %d: the checkpoint after a kill does not load: %v", round, err)
		}
		if st.Epoch < 1 || len(st.Params.Flat) != 14591685 {
			t.Fatalf("round %d: epoch %d, %d parameters", round, st.Epoch, len(st.Params.Flat))
		}
		t.Logf("round %d: killed after epoch %d was written", round, st.Epoch)
		os.Remove(path) // the next writer starts again from epoch 1
	}
}
