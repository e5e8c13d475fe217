package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/alexring/alexring/allreduce"
	"github.com/alexring/alexring/coordinator/controlpb"
	"github.com/alexring/alexring/coordinator/membership"
	"github.com/alexring/alexring/internal/security"
	"github.com/alexring/alexring/sharding"
)

// JoinConfig is how a worker finds its job.
type JoinConfig struct {
	Join        string        // the coordinator's gossip address
	Bind        string        // this worker's gossip address (port 0 picks one)
	RingAddr    string        // where this worker's ring service listens
	Name        string        // membership name; ranks follow the sorted names
	Device      string        // "cpu" without CUDA
	Data        string        // overrides the job's data folder (another mount point)
	JoinTimeout time.Duration // retries of the first join
	// StartTimeout bounds the wait for the job to start once registered.
	StartTimeout time.Duration
	Local        bool               // loopback-tuned failure detection
	Security     *security.Material // gossip key and mTLS (nil: neither)
	Job          string             // the job to join; empty: whichever the coordinator runs
	Telemetry    Telemetry          // progress bars, metrics, timeline
}

// RunJoined is one rank of a job: join the cluster, register with the
// coordinator, open the ring, train, report every epoch. It returns when the
// job is done, or with the error that ended it.
func RunJoined(ctx context.Context, jc JoinConfig, log *zap.Logger) error {
	node, err := allreduce.Listen(jc.RingAddr, jc.Security.ServerCreds(), log)
	if err != nil {
		return err
	}
	defer node.Close()
	var key []byte
	if jc.Security != nil {
		key = jc.Security.GossipKey
	}
	member, err := membership.Start(membership.Config{
		Name: jc.Name, Bind: jc.Bind, Join: jc.Join, JoinTimeout: jc.JoinTimeout, Local: jc.Local, SecretKey: key,
		Meta: membership.Meta{Role: membership.RoleWorker, GRPC: node.Addr, Device: jc.Device},
	}, log)
	if err != nil {
		return err
	}
	defer member.Leave(time.Second)
	coord, err := member.Coordinator(10 * time.Second)
	if err != nil {
		return fmt.Errorf("worker: %w (joined through %s)", err, jc.Join)
	}
	creds := jc.Security.ClientCreds()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(coord.Meta.GRPC, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("worker: coordinator control address %q: %w", coord.Meta.GRPC, err)
	}
	defer conn.Close()
	control := controlpb.NewControlClient(conn)
	log.Info("registering with the coordinator", zap.String("coordinator", coord.Meta.GRPC), zap.String("name", jc.Name))
	regCtx, cancel := context.WithTimeout(ctx, jc.StartTimeout)
	plan, err := control.Register(regCtx, &controlpb.RegisterRequest{JobId: jc.Job, Name: jc.Name, RingAddr: node.Addr, Device: jc.Device})
	cancel()
	if err != nil {
		return fmt.Errorf("worker: register with the coordinator at %s: %w", coord.Meta.GRPC, err)
	}
	cfg := DefaultConfig()
	if err := json.Unmarshal(plan.ConfigJson, &cfg); err != nil {
		return fmt.Errorf("worker: the coordinator's job config: %w", err)
	}
	if jc.Data != "" {
		cfg.Data = jc.Data
	}
	log.Info("job plan received", zap.Int("rank", int(plan.Rank)), zap.String("job", plan.JobId), zap.Int("world", int(plan.World)), zap.String("ring", plan.RingId))

	rcfg := allreduce.DefaultConfig()
	rcfg.RingID, rcfg.Rank, rcfg.World, rcfg.Peers = plan.RingId, int(plan.Rank), int(plan.World), plan.Peers
	rcfg.ChunkBytes, rcfg.FP16, rcfg.OpTimeout = cfg.Ring.ChunkBytes, cfg.Ring.FP16, cfg.Ring.OpTimeout
	rcfg.Creds = jc.Security.ClientCreds()
	ring, err := allreduce.Open(ctx, node.Service, rcfg, log)
	if err != nil {
		return err
	}
	defer ring.Close()

	// A peer that leaves the gossip is gone: fail the collective waiting on it
	// now rather than at its deadline.
	ranks := map[string]int{}
	for r, addr := range plan.Peers {
		ranks[addr] = r
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		for {
			select {
			case <-watchCtx.Done():
				return
			case e := <-member.Events():
				if e.Kind != membership.Left {
					continue
				}
				if r, ok := ranks[e.Meta.GRPC]; ok && e.Meta.Role == membership.RoleWorker {
					ring.Fail(r, fmt.Sprintf("%s left the cluster", e.Name))
				}
			}
		}
	}()

	t, err := NewTrainer(cfg, ring, log)
	if err != nil {
		return err
	}
	defer t.Close()
	t.Telemetry = jc.Telemetry
	jc.Telemetry.Timeline.NameProcess(fmt.Sprintf("rank %d (%s)", plan.Rank, jc.Name))
	if fp := t.train.Fingerprint(); fp != plan.Dataset {
		return fmt.Errorf("worker: %s lists different files than the coordinator's (fingerprint %016x, coordinator %016x)", cfg.Data, fp, plan.Dataset)
	}
	t.EpochPlan = func(ctx context.Context, epoch int) (sharding.Plan, error) {
		s, err := control.EpochShard(ctx, &controlpb.EpochRequest{JobId: plan.JobId, Rank: plan.Rank, Epoch: int32(epoch)})
		if err != nil {
			return sharding.Plan{}, err
		}
		return sharding.Plan{Seed: s.Seed, Epoch: int(s.Epoch), World: int(s.World), Size: int(s.Size),
			Dataset: s.Dataset, DropLast: s.DropLast, Shuffle: s.Shuffle}, nil
	}
	t.OnEpoch = func(r EpochResult) error {
		log.Info("epoch done", zap.Int("rank", int(plan.Rank)), zap.Int("epoch", r.Epoch), zap.Float64("train_loss", r.TrainLoss),
			zap.Float64("img_per_s", float64(r.Images)/r.Duration.Seconds()), zap.Uint64("checksum", r.Checksum), zap.Int("bad_files", r.BadFiles), zap.Int("skipped_steps", r.Skipped))
		reply, err := control.Report(ctx, &controlpb.EpochReport{
			JobId: plan.JobId, Rank: plan.Rank, Epoch: int32(r.Epoch), TrainLoss: r.TrainLoss, ValAccuracy: r.ValAccuracy,
			ImagesPerS: float64(r.Images) / r.Duration.Seconds(), Checksum: r.Checksum, Best: r.Best,
			Images: int32(r.Images), Seconds: r.Duration.Seconds(),
		})
		if err != nil {
			return fmt.Errorf("worker: report epoch %d: %w", r.Epoch, err)
		}
		if reply.Stop {
			return fmt.Errorf("worker: the coordinator stopped the job: %s", reply.Reason)
		}
		return nil
	}
	if err := t.Run(ctx); err != nil {
		return err
	}
	// Leave together: no rank closes its ring while another still sends.
	if err := ring.Barrier(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("worker: final barrier: %w", err)
	}
	log.Info("job done", zap.Int("rank", int(plan.Rank)))
	return nil
}

// DefaultJoinConfig is a worker on this machine joining a coordinator on its
// default gossip port.
func DefaultJoinConfig() JoinConfig {
	host, _ := os.Hostname()
	return JoinConfig{
		Join: "127.0.0.1:7946", Bind: "127.0.0.1:0", RingAddr: "127.0.0.1:0",
		Name: fmt.Sprintf("%s-%d", host, os.Getpid()), Device: "cpu",
		JoinTimeout: 30 * time.Second, StartTimeout: 10 * time.Minute,
	}
}
