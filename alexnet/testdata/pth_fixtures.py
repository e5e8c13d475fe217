"""Write PyTorch checkpoints for alexnet's .pth reader tests, and what they hold.

usage: /usr/bin/python3 pth_fixtures.py OUTDIR
Writes OUTDIR/<case>.pth for each case below and OUTDIR/expected.json:
{case: {"names": [...], "tensors": {name: {"dtype", "shape", "values"}}}}, the
names as the reader should give them (wrappers and module. removed).
"""
import collections
import json
import os
import sys

import torch

out = sys.argv[1]
g = torch.Generator().manual_seed(1)
base = torch.randn(4, 6, generator=g)
big = torch.arange(40, dtype=torch.float32)
sd = collections.OrderedDict()
sd["conv.weight"] = torch.randn(2, 3, 2, 2, generator=g)
sd["conv.bias"] = torch.randn(2, generator=g)
sd["transposed"] = base.t()                     # strides (1, 6)
sd["sliced"] = base[1:3, ::2]                  # offset 6, strides (12, 2)
sd["view"] = big[5:17].view(3, 4)              # offset 5 into a shared storage
sd["view2"] = big[20:26]                       # the same storage again
sd["expanded"] = torch.tensor([1.5, -2.0]).view(2, 1).expand(2, 3)  # stride 0
sd["scalar"] = torch.tensor(3.25)
sd["steps"] = torch.tensor([7, -1, 1 << 40], dtype=torch.int64)
sd["half"] = torch.tensor([0.5, -1.25], dtype=torch.float16)
sd["empty"] = torch.zeros(0, 3)

def dump(d):
    e = {"names": list(d), "tensors": {}}
    for k, v in d.items():
        e["tensors"][k] = {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.contiguous().flatten().tolist()}
    return e

expected = {}
cases = {
    "zip": (sd, {}),
    "legacy": (sd, {"_use_new_zipfile_serialization": False}),
    "zip_proto4": (sd, {"pickle_protocol": 4}),
    "wrapped_state": ({"state_dict": sd, "epoch": 3, "best_acc": 0.5}, {}),
    "wrapped_model_ddp": ({"model": collections.OrderedDict(("module." + k, v) for k, v in sd.items()), "step": 9}, {}),
    "legacy_ddp": (collections.OrderedDict(("module." + k, v) for k, v in sd.items()), {"_use_new_zipfile_serialization": False}),
    "parameters": ({"w": torch.nn.Parameter(torch.randn(3, generator=g))}, {}),
}
for name, (obj, kw) in cases.items():
    torch.save(obj, os.path.join(out, name + ".pth"), **kw)
    expected[name] = dump(sd if name not in ("parameters",) else obj)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


torch.save({"x": Evil()}, os.path.join(out, "evil.pth"))
torch.save({"x": Evil()}, os.path.join(out, "evil_legacy.pth"), _use_new_zipfile_serialization=False)
json.dump(expected, open(os.path.join(out, "expected.json"), "w"))
