"""The peer of `bench step --freeze`: the reference's bench_step.py, with
--freeze features (requires_grad False on the features, Adam over the
classifier only: PyTorch's fine-tuning step) and the torchvision variant.

usage: /usr/bin/python3 cmd/bench/peers/bench_step_freeze.py [--variant seed|torchvision] [--freeze none|features] [--batch 32] [--threads 2]
Run from the repository root, beside ../shared/reference/pytorch (--reference).
"""
import argparse, os, resource, statistics, sys, time

_ref = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--reference"), "../shared/reference/pytorch")
sys.path.insert(0, os.path.abspath(_ref))
import torch, torch.nn as nn
from model import AlexNet
from make_fixture import VARIANTS
VARIANTS = dict(VARIANTS, torchvision=dict(widths=(64, 192, 384, 256, 256), hidden=4096, size=224, classes=5))

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--variant", choices=sorted(VARIANTS), default="seed")
ap.add_argument("--freeze", choices=["none", "features"], default="none")
ap.add_argument("--reference", default="../shared/reference/pytorch", help="the folder of the reference's model.py")
a = ap.parse_args()
torch.set_num_threads(a.threads)
v = VARIANTS[a.variant]
torch.manual_seed(0)
net = AlexNet(num_classes=v["classes"], init_weights=True, widths=v["widths"], hidden=v["hidden"], size=v["size"])
net.train()
params = net.parameters()
if a.freeze == "features":
    for p in net.features.parameters():
        p.requires_grad_(False)
    params = net.classifier.parameters()
opt = torch.optim.Adam(params, lr=2e-4)
loss_fn = nn.CrossEntropyLoss()
x = torch.randn(a.batch, 3, v["size"], v["size"])
y = torch.randint(0, v["classes"], (a.batch,))
times = []
for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    if i >= a.warmup:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"pytorch {torch.__version__} variant={a.variant} batch={a.batch} freeze={a.freeze}: median {med*1e3:.1f} ms/step, {a.batch/med:.1f} img/s, peak RSS {rss:.0f} MB")
