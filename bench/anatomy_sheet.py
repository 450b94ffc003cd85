"""Contact sheet of the anatomy model's outlines and CTR lines on real images, for looking at.

    python bench/anatomy_sheet.py OUT.png IMAGE... [--model models/anatomy.safetensors]

Each tile: the image as the viewer shows it by default, right lung cyan, left lung green, heart
magenta, the CTR's heart (magenta) and thorax (white) lines, and the ratio. Also prints the time
per image (segmentation at 256 px plus masks and CTR at the image's own size).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image, ImageDraw

from cxr_viewer.ai.anatomy import AnatomyModel, default_anatomy_path
from cxr_viewer.io.display import percentile_window
from cxr_viewer.io.image import open_image

COLOURS = [(0, 220, 255), (60, 230, 90), (255, 60, 220)]


def tile(path: str, model: AnatomyModel, size: int = 320) -> tuple[Image.Image, float]:
    image = open_image(path)
    t0 = time.perf_counter()
    a = model.segment_image(image)
    dt = time.perf_counter() - t0
    v = image.values.astype(np.float32) * (-1 if image.monochrome1 else 1)
    w = percentile_window(v, image.padding, 0.5, 99.5)
    lo, hi = w.center - w.width / 2, w.center + w.width / 2
    grey = (np.clip((v - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, 2)
    from scipy import ndimage

    for m, c in zip(a.masks, COLOURS):
        edge = m & ~ndimage.binary_erosion(m, iterations=max(1, m.shape[0] // 200))
        rgb[edge] = c
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    lw = max(2, im.width // 200)
    if a.ctr is not None:
        d.line([a.ctr.heart[0], a.ctr.heart[1]], fill=(255, 60, 220), width=lw)
        d.line([a.ctr.thorax[0], a.ctr.thorax[1]], fill=(255, 255, 255), width=lw)
    im = im.resize((size, int(size * im.height / im.width)))
    d = ImageDraw.Draw(im)
    label = f"CTR {a.ctr.ratio:.2f}" if a.ctr else "no CTR"
    d.rectangle([0, 0, size, 16], fill=(0, 0, 0))
    d.text((3, 2), f"{label}  {path.split('/')[-1][:28]}", fill=(255, 255, 0))
    return im, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--model", default=default_anatomy_path())
    ap.add_argument("--columns", type=int, default=4)
    args = ap.parse_args()
    model = AnatomyModel.from_file(args.model)
    tiles, times = [], []
    for p in args.images:
        t, dt = tile(p, model)
        tiles.append(t)
        times.append(dt)
    h = max(t.height for t in tiles)
    cols = args.columns
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * 320, rows * h))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * 320, (i // cols) * h))
    sheet.save(args.out)
    print(f"{len(tiles)} images, segmentation {np.median(times) * 1000:.0f} ms median per image "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")


if __name__ == "__main__":
    main()
