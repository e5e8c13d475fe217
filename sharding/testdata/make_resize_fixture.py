"""Write the resize fixture: what PIL (as torchvision uses it) makes of a random image.

usage: /usr/bin/python3 make_resize_fixture.py   (Debian's python3-pil)
resize_src.png              a random 53x41 RGB image
resize_<name>.rgb           raw RGB bytes of PIL's BILINEAR resize of a crop (top, left, h, w) to side x side
"""
import random
from PIL import Image

random.seed(1)
w, h = 53, 41
img = Image.new("RGB", (w, h))
img.putdata([tuple(random.randrange(256) for _ in range(3)) for _ in range(w * h)])
img.save("resize_src.png")
cases = {"full224": (0, 0, h, w, 224), "full17": (0, 0, h, w, 17),
         "crop24": (5, 7, 30, 20, 24), "crop9": (3, 11, 37, 40, 9), "same": (0, 0, 41, 41, 41)}
for name, (top, left, ch, cw, side) in cases.items():
    out = img.crop((left, top, left + cw, top + ch)).resize((side, side), Image.BILINEAR)
    open(f"resize_{name}.rgb", "wb").write(out.tobytes())
