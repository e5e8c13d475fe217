"""Check that PyTorch takes a model file written by alexring (and report its metadata).

usage: /usr/bin/python3 torch_load.py MODEL.safetensors   (Debian's python3-torch; no safetensors package needed)
Loads the file with a minimal safetensors reader into the reference AlexNet with
load_state_dict(strict=True) and runs one forward pass.
"""
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../shared/reference/pytorch"))
from model import AlexNet  # noqa: E402
from make_fixture import VARIANTS  # noqa: E402


def load_file(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    body = data[8 + n:]
    out = {}
    for name, e in header.items():
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, end = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(body[b:end]), dtype=torch.float32).reshape(e["shape"])
    return out, meta


sd, meta = load_file(sys.argv[1])
v = VARIANTS[meta.get("variant", "seed")]
model = AlexNet(num_classes=sd["classifier.6.bias"].shape[0], widths=v["widths"], hidden=v["hidden"], size=v["size"])
model.load_state_dict(sd, strict=True)
model.eval()
with torch.no_grad():
    out = model(torch.zeros(1, 3, v["size"], v["size"]))
print("loaded with load_state_dict(strict=True):", meta, "logits of a zero image:", out.numpy().round(4).tolist())
