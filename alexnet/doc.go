// Package alexnet is the seed's AlexNet: its layer spec and named variants, the
// flat parameter vector in PyTorch state_dict order, the seed's initialisation,
// forward/backward on the CPU as a gorgonia graph, Adam over the flat vector, and
// safetensors checkpoints that PyTorch loads with load_state_dict.
//
// Everything numeric follows PyTorch so that a model trained here is the same model
// there: conv weights OIHW, linear weights [out,in], max-pool floor mode, dropout
// 0.5 scaled by 2 in training, softmax cross-entropy averaged over the batch, and
// Adam with torch.optim.Adam's defaults.
//
// One training step:
//
//	spec, _ := alexnet.NewSpec("seed", 5)
//	params := alexnet.NewParams(spec)   // one []float32; each layer a view into it
//	params.Init(seed)
//	net, _ := alexnet.NewNet(params, alexnet.NetOptions{Batch: 32, Train: true, Dropout: 0.5})
//	adam, _ := alexnet.NewAdam(alexnet.DefaultAdam(), len(params.Flat))
//	grad := make([]float32, len(params.Flat))
//	loss, _ := net.Gradient(images, labels, count, rng, grad) // forward + backward
//	adam.Update(params.Flat, grad)                            // the net sees the new weights
//
// The convolutions and linear layers are custom gorgonia ops (conv.go,
// linear.go) that call sgemm directly; the loss is one too (loss.go).
package alexnet
