"""The peer of `bench loader`: PIL decoding and torchvision's train transforms, one process.

usage: /usr/bin/python3 torchvision_loader.py DATA_SPLIT [--images 1000]   (Debian's python3-torchvision)
For each image, as the seed's DataLoader worker does: PIL open + convert("RGB"),
RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize(0.5, 0.5).
Prints the split of the time and images/s, to put beside `bench loader --goroutines 1`.
"""
import argparse
import glob
import os
import time

from PIL import Image
from torchvision import transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("split")
    ap.add_argument("--images", type=int, default=1000)
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.split, "*", "*")))
    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    decode = augment = 0.0
    for i in range(a.images):
        t0 = time.perf_counter()
        img = Image.open(files[i % len(files)]).convert("RGB")
        t1 = time.perf_counter()
        tf(img)
        t2 = time.perf_counter()
        decode += t1 - t0
        augment += t2 - t1
    n = a.images
    print(f"torchvision: decode {1e3 * decode / n:.2f} ms + transforms {1e3 * augment / n:.2f} ms per image")
    print(f"RESULT bench=loader-peer images={n} img_per_s={n / (decode + augment):.1f}")


if __name__ == "__main__":
    main()
