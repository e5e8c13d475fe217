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
// The flow of one step:
//
//	params := alexnet.NewParams(spec)     // one []float32, views per tensor
//	net, _ := alexnet.NewNet(spec, params, batch)
//	loss, _ := net.Forward...             // fills grads (a flat []float32 like params)
//	opt.Step(params.Flat, grads)          // Adam over the flat vectors
package alexnet
