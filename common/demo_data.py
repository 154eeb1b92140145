"""A small, learnable, fine-grained-style image data set that the suite can always train on.

Eight kinds of drawn "birds" on noisy backgrounds. Classes differ only in details of the plumage: its pattern
(horizontal bars, vertical stripes, spots, checks) and the pattern's grain (fine or coarse). Body colour, size,
position, pose, beak length and the background vary at random and carry no class information.
Each image also has a latitude, longitude and date
drawn around a class-specific range and season (some missing), so that methods using metadata (Dynamic MLP) have
something to gain: the two classes that differ only by the grain live in different places.

Layout written (list-file convention of the suite):
    <root>/images/<class>/<nnnn>.jpg
    <root>/train_list.txt, val_list.txt   "images/<class>/<nnnn>.jpg <label> <lat> <lon> <YYYY-MM-DD>"
    <root>/classes.txt                    one class name per line
Missing metadata is written as "nan nan nan".

    python -m common.demo_data --root demo_data
"""
import argparse
import datetime
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PATTERNS = ("barred", "striped", "spotted", "checkered")
GRAINS = ("fine", "coarse")
CLASS_NAMES = [f"{p}_{g}" for p in PATTERNS for g in GRAINS]
# per class: (latitude, longitude) centre and the peak day of the year
HOMES = [(50, 10, 120), (-30, 140, 300), (40, -100, 160), (-10, -60, 30),
         (60, 100, 200), (5, 20, 250), (-40, 175, 340), (30, 70, 80)]
IMAGE_SIZE = 80
MARKER = "demo_data_v2"


def _background(rng, size):
    base = rng.uniform(60, 200, size=3)
    gradient = np.linspace(-30, 30, size)[None, :, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 22, size=(size, size, 3))
    img = np.clip(base[None, None, :] + gradient + noise, 0, 255).astype("uint8")
    return Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=1.0))


def _draw_bird(rng, label, size=IMAGE_SIZE):
    pattern, fine = PATTERNS[label // 2], GRAINS[label % 2] == "fine"
    img = _background(rng, size)
    draw = ImageDraw.Draw(img)
    scale = rng.uniform(0.8, 1.15)
    cx = size / 2 + rng.uniform(-8, 8)
    cy = size / 2 + rng.uniform(-6, 6)
    bw, bh = 22 * scale, 14 * scale  # body half-width / half-height
    facing = rng.choice([-1, 1])      # head on the left or the right
    body_col = tuple(int(c) for c in rng.uniform(40, 230, size=3))
    mark_col = tuple(int(255 - c) for c in body_col)
    box = (cx - bw, cy - bh, cx + bw, cy + bh)
    draw.ellipse(box, fill=body_col)
    # plumage pattern, clipped to the body with a mask
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    marks = Image.new("RGB", (size, size), body_col)
    md = ImageDraw.Draw(marks)
    step = (3.6 if fine else 6.4) * scale
    if pattern == "barred":
        y = cy - bh
        while y < cy + bh:
            md.rectangle((cx - bw, y, cx + bw, y + step / 2), fill=mark_col)
            y += step
    elif pattern == "striped":
        x = cx - bw
        while x < cx + bw:
            md.rectangle((x, cy - bh, x + step / 2, cy + bh), fill=mark_col)
            x += step
    elif pattern == "spotted":
        for _ in range(16 if fine else 6):
            sx, sy = rng.uniform(cx - bw * 0.8, cx + bw * 0.8), rng.uniform(cy - bh * 0.7, cy + bh * 0.7)
            r = (1.4 if fine else 3.0) * scale
            md.ellipse((sx - r, sy - r, sx + r, sy + r), fill=mark_col)
    elif pattern == "checkered":
        for i, y in enumerate(np.arange(cy - bh, cy + bh, step)):
            for j, x in enumerate(np.arange(cx - bw, cx + bw, step)):
                if (i + j) % 2 == 0:
                    md.rectangle((x, y, x + step, y + step), fill=mark_col)
    img.paste(marks, (0, 0), mask)
    # head and beak
    hx, hy, hr = cx + facing * (bw + 4 * scale), cy - bh * 0.7, 8 * scale
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=body_col)
    eye = 1.6 * scale
    draw.ellipse((hx + facing * 3 * scale - eye, hy - 2 * scale - eye, hx + facing * 3 * scale + eye,
                  hy - 2 * scale + eye), fill=(0, 0, 0))
    length = rng.uniform(4, 16) * scale
    tip_x = hx + facing * (hr + length)
    draw.polygon([(hx + facing * hr * 0.8, hy - 4 * scale), (hx + facing * hr * 0.8, hy + 4 * scale),
                  (tip_x, hy + rng.uniform(-1, 1))], fill=(235, 170, 30))
    # legs and tail
    for dx in (-5, 5):
        draw.line((cx + dx * scale, cy + bh * 0.9, cx + dx * scale, cy + bh + 8 * scale), fill=(60, 40, 20), width=2)
    tx = cx - facing * bw
    draw.polygon([(tx, cy - 3 * scale), (tx, cy + 3 * scale), (tx - facing * 10 * scale, cy + rng.uniform(-6, 6))],
                 fill=body_col)
    angle = rng.uniform(-12, 12)
    return img.rotate(angle, resample=Image.BICUBIC, fillcolor=tuple(int(v) for v in rng.uniform(60, 200, 3)))


def _metadata(rng, label, missing_prob):
    if rng.random() < missing_prob:
        return "nan nan nan"
    lat0, lon0, day0 = HOMES[label]
    lat = float(np.clip(lat0 + rng.normal(0, 6), -89.9, 89.9))
    lon = (lon0 + rng.normal(0, 12) + 180) % 360 - 180
    year = int(rng.integers(2015, 2022))
    day = int((day0 + rng.normal(0, 20)) % 365)
    date = datetime.date(year, 1, 1) + datetime.timedelta(days=day)
    return f"{lat:.4f} {lon:.4f} {date.isoformat()}"


def is_demo_data(root):
    return os.path.isfile(os.path.join(root, MARKER))


def make_demo_data(root, train_per_class=60, val_per_class=25, seed=0, missing_prob=0.05):
    """Write the demo set under `root` (idempotent: an existing complete set is left as it is)."""
    if is_demo_data(root):
        return root
    rng = np.random.default_rng(seed)
    lines = {"train": [], "val": []}
    for label, name in enumerate(CLASS_NAMES):
        folder = os.path.join(root, "images", name)
        os.makedirs(folder, exist_ok=True)
        for i in range(train_per_class + val_per_class):
            rel = f"images/{name}/{i:04d}.jpg"
            _draw_bird(rng, label).save(os.path.join(root, rel), quality=92)
            split = "train" if i < train_per_class else "val"
            lines[split].append(f"{rel} {label} {_metadata(rng, label, missing_prob)}")
    for split, rows in lines.items():
        order = rng.permutation(len(rows))
        with open(os.path.join(root, f"{split}_list.txt"), "w") as f:
            f.write("\n".join(rows[i] for i in order) + "\n")
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    with open(os.path.join(root, MARKER), "w") as f:  # written last: marks a complete set
        f.write(f"seed {seed} train {train_per_class} val {val_per_class}\n")
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description="write the built-in demo data set")
    p.add_argument("--root", default="demo_data")
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--val-per-class", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    make_demo_data(a.root, a.train_per_class, a.val_per_class, a.seed)
    print(f"demo data in {a.root}: {len(CLASS_NAMES)} classes")


if __name__ == "__main__":
    main()
