"""Write the image-mode zoo: odd files and what PIL's convert("RGB") makes of them.

usage: /usr/bin/python3 make_zoo_fixture.py   (Debian's python3-pil)
zoo_<name>.<ext>   an image in an unusual mode; zoo_<name>.rgb  PIL's convert("RGB") bytes
"""
import random
from PIL import Image

random.seed(2)
W, H = 12, 9
def noise(mode, n, hi=256):
    return [tuple(random.randrange(hi) for _ in range(n)) if n > 1 else random.randrange(hi) for _ in range(W * H)]

imgs = {}
im = Image.new("CMYK", (W, H)); im.putdata(noise("CMYK", 4)); imgs["cmyk.jpg"] = im
im = Image.new("L", (W, H)); im.putdata(noise("L", 1)); imgs["gray.png"] = im
im = Image.new("RGBA", (W, H)); im.putdata(noise("RGBA", 4)); imgs["rgba.png"] = im
im = Image.new("P", (W, H)); im.putpalette([random.randrange(256) for _ in range(768)]); im.putdata(noise("P", 1, 16))
im.info["transparency"] = bytes([random.randrange(256) for _ in range(16)]); imgs["palette.png"] = im
im = Image.new("I;16", (W, H)); im.putdata(noise("I", 1, 65536)); imgs["gray16.png"] = im
im = Image.new("LA", (W, H)); im.putdata(noise("LA", 2)); imgs["gray_alpha.png"] = im
# Smooth colour JPEGs (4:2:0 and 4:4:4) and a grayscale one: PIL decodes them
# with libjpeg-turbo, as alexring does.
grad = Image.new("RGB", (37, 29)); grad.putdata([((x * 7) % 256, (y * 9) % 256, (x * y) % 256) for y in range(29) for x in range(37)])
imgs["rgb420.jpg"] = grad
imgs["rgb444.jpg"] = grad.copy()
imgs["gray8.jpg"] = grad.convert("L")
for name, im in imgs.items():
    kw = {"quality": 95} if name.endswith(".jpg") else {}
    if name == "rgb444.jpg":
        kw["subsampling"] = 0
    if name == "palette.png":
        im.save("zoo_" + name, transparency=im.info["transparency"])
    else:
        im.save("zoo_" + name, **kw)
    back = Image.open("zoo_" + name)
    open("zoo_" + name.split(".")[0] + ".rgb", "wb").write(back.convert("RGB").tobytes())
    print(name, back.mode)
