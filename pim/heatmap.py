"""PIM heat map: where a trained model sees a chosen class in an image. One PNG per image: original | map | overlay
side by side at the image's own resolution (the map drawn where the model's resized and cropped view lies in the
image; blank outside it), titled with the class name and its probability, with the map's colour bar. -save_map
writes the map of the model's view itself.

    python pim/heatmap.py -cfg configs/pim/cub_swin_large_384.yaml -pretrained best.pdparams \\
        -image bird.jpg -target_class 12 -output bird_heat.png [-method tokens|gradcam] [-head combiner]
    # every image under a folder, one model load: heatmaps/<relative path>.png
    python pim/heatmap.py -pretrained best.pdparams -image birds/ -output heatmaps

Two class-discriminative maps (the default target is the model's own prediction; -target_class takes an index or
a class name from classes.txt under -data_path):

* ``tokens`` (default when the model has per-token classifiers, i.e. the FPN or the selector): for every level the
  softmax probability of the target class at each token (the quantity the weakly supervised selector ranks by),
  each level min-max normalised, resized to the image and averaged with weights 8/4/2/1 from the finest level to
  the coarsest (the reference heat.py's weights).
* ``gradcam``: Grad-CAM of the chosen head's logit for the target class (default: the main head, the combiner)
  with respect to every backbone level, combined with the same weights.

The reference's heat.py is not class-discriminative: it multiplies the backbone features with a constant
classifier, so its map ignores both the class and the training. Here the map changes with -target_class.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, from any cwd

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

LEVEL_WEIGHTS = (8.0, 4.0, 2.0, 1.0)

__all__ = ["token_maps", "gradcam_maps", "combine_maps", "class_heatmap", "blend", "panels", "images_in",
           "main"]


def _grid_map(values, info):
    """Per-token values [S] of one level -> its 2-D grid (non-spatial prefix tokens such as a class token dropped)."""
    h, w = info.grid
    return np.asarray(values)[info.prefix:].reshape(h, w)


def token_maps(model, x, target):
    """[level map] of the target class's per-token softmax probability (FPN or selector classifiers)."""
    import paddle
    import paddle.nn.functional as F
    if model.backbone_only:
        raise ValueError("the 'tokens' map needs per-token classifiers (FPN or selector); use -method gradcam")
    with paddle.no_grad():
        out = model(x)
    maps = []
    for name, info in zip(model.layer_names, model.infos):
        prob = F.softmax(out[name][0].astype("float32"), axis=-1)[:, target].numpy()
        maps.append(_grid_map(prob, info))
    return maps


def gradcam_maps(model, x, target, head, eval_heads):
    """[level map] of Grad-CAM: ReLU(sum over channels of (mean gradient of the head's target logit) x feature)."""
    import paddle
    feats = model.forward_backbone(x)
    for f in feats:
        f.stop_gradient = False
    logits = eval_heads(model.forward_head(feats))[head]
    grads = paddle.grad(logits[0, target], feats, allow_unused=True)
    maps = []
    for f, g, info in zip(feats, grads, model.infos):
        if g is None:
            maps.append(np.zeros(info.grid, dtype=np.float32))
            continue
        f, g = f[0].numpy(), g[0].numpy()
        if f.ndim == 3:                       # map [C, H, W] -> tokens [H*W, C]
            f = f.reshape(f.shape[0], -1).T
            g = g.reshape(g.shape[0], -1).T
        weights = g[info.prefix:].mean(axis=0)  # per channel, over the spatial tokens
        cam = np.maximum((f * weights).sum(axis=-1), 0.0)
        maps.append(_grid_map(cam, info))
    return maps


def _normalise(m):
    m = np.asarray(m, dtype=np.float64)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def combine_maps(maps, size, weights=LEVEL_WEIGHTS):
    """Each level normalised to [0, 1], resized (bilinear) to size x size, weighted, renormalised."""
    total = np.zeros((size, size), dtype=np.float64)
    used = 0.0
    for m, w in zip(maps, weights):
        img = Image.fromarray(_normalise(m).astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
        total += w * np.asarray(img, dtype=np.float64)
        used += w
    return _normalise(total / max(used, 1e-12))


def class_heatmap(model, x, target, method="tokens", head=None, eval_heads=None):
    """[H, W] map in [0, 1] for the target class (x: [1, 3, H, W] normalised image)."""
    if method == "tokens":
        maps = token_maps(model, x, target)
    elif method == "gradcam":
        maps = gradcam_maps(model, x, target, head, eval_heads)
    else:
        raise ValueError(f"unknown heat-map method '{method}' (tokens or gradcam)")
    return combine_maps(maps, int(x.shape[-1]))


def blend(image, heat, alpha=0.5, threshold=0.0):
    """RGB uint8 image [H, W, 3] and a [H, W] map in [0, 1] -> the 'jet'-coloured map blended over the image;
    values below `threshold` leave the image as it is."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import colormaps
    colour = colormaps["jet"](heat)[..., :3] * 255.0
    a = np.where(heat >= threshold, alpha, 0.0)[..., None]
    return np.clip(image.astype(np.float64) * (1 - a) + colour * a, 0, 255).astype(np.uint8)


def on_original(heat, box, size):
    """The [h, w] map of the model's view drawn where that view lies in the original image of `size` (w, h): a
    [H, W] map at the original's resolution, NaN outside the view (or None when `box` is None)."""
    if box is None:
        return None
    w, h = size
    left, top, right, bottom = box
    x0, y0 = max(0, int(round(left))), max(0, int(round(top)))
    x1, y1 = min(w, int(round(right))), min(h, int(round(bottom)))
    full = np.full((h, w), np.nan, dtype=np.float32)
    if x1 > x0 and y1 > y0:
        resized = Image.fromarray(heat.astype(np.float32), mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR)
        full[y0:y1, x0:x1] = np.clip(np.asarray(resized), 0.0, 1.0)
    return full


def panels(shown, heat, overlay, title, labels=("original", "map", "overlay")):
    """Figure (matplotlib, no pyplot): original | map | overlay side by side, each at the image's own resolution
    (one image pixel, one figure pixel at 100 dpi), a title above, the map's colour bar at the right."""
    from matplotlib.figure import Figure

    import textwrap

    h, w = heat.shape
    gap, bottom, bar, bar_text = 8, 8, 14, 40
    width = 3 * w + 4 * gap + bar + bar_text
    font = max(7.0, min(11.0, width / 45.0))
    line = font * 100 / 72 * 1.25                  # one text line in pixels at 100 dpi
    title = textwrap.fill(title, max(12, int(width / (0.62 * font * 100 / 72))))
    top = int(8 + line * (title.count("\n") + 1) + line * 0.9 + 4)
    height = top + h + bottom
    fig = Figure(figsize=(width / 100.0, height / 100.0), dpi=100)
    fig.suptitle(title, fontsize=font, y=1.0 - 6.0 / height, va="top")
    mappable = None
    for i, (image, label) in enumerate(zip((shown, heat, overlay), labels)):
        ax = fig.add_axes([(gap + i * (w + gap)) / width, bottom / height, w / width, h / height])
        if i == 1:
            mappable = ax.imshow(image, cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        else:
            ax.imshow(image, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        ax.set_title(label, fontsize=font * 0.85, pad=2)
    cax = fig.add_axes([(3 * w + 4 * gap) / width, bottom / height, bar / width, h / height])
    cbar = fig.colorbar(mappable, cax=cax)
    cbar.ax.tick_params(labelsize=font * 0.75)
    return fig


def images_in(folder):
    """Image files under `folder` (recursive, sorted) -> [(path, output name without extension)]: the relative
    path, its extension dropped, or kept as '_ext' where two files would share a name."""
    from common.data.datasets import IMG_EXTENSIONS, DataError
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                   if f.lower().endswith(IMG_EXTENSIONS))
    if not paths:
        raise DataError(f"no images found under {folder}")
    stems = [os.path.splitext(os.path.relpath(p, folder))[0] for p in paths]
    taken = {s: stems.count(s) for s in stems}
    return [(p, s if taken[s] == 1 else s + "_" + os.path.splitext(p)[1].lstrip(".").lower())
            for p, s in zip(paths, stems)]


def main(argv=None):
    from common.errors import run_entry
    from common.inference import add_model_flags

    p = add_model_flags(argparse.ArgumentParser(
        description="PIM: class heat maps (PNG: original | map | overlay) of one image or of every image in a folder"))
    p.add_argument("-image", required=True, help="an image, or a folder (every image under it, one PNG each)")
    p.add_argument("-target_class", default="", help="class index or name (default: each image's predicted class)")
    p.add_argument("-method", default="auto", choices=["auto", "tokens", "gradcam"])
    p.add_argument("-head", default="", help="head for -method gradcam and for the prediction (default: main)")
    p.add_argument("-output", default="", help="the PNG (default heatmap.png); for a folder -image, a folder "
                                               "(default heatmaps/) that receives <relative path>.png per image")
    p.add_argument("-alpha", type=float, default=0.5, help="opacity of the map")
    p.add_argument("-threshold", type=float, default=0.0, help="map values below it are not drawn")
    p.add_argument("-save_map", default="", help="also save the raw [H, W] map (.npy); for a folder -image, a "
                                                 "folder receiving <relative path>.npy per image")
    args = p.parse_args(argv)
    return run_entry(_heatmap, args, exit_on_error=False)


def _target_index(target_class, names):
    from common.config import ConfigError
    if target_class == "":
        return None
    if target_class.lstrip("-").isdigit():
        target = int(target_class)
    elif target_class in names:
        target = names.index(target_class)
    else:
        raise ConfigError(f"-target_class '{target_class}' is neither an index nor a class name")
    if not 0 <= target < len(names):
        raise ConfigError(f"-target_class {target} is outside 0..{len(names) - 1}")
    return target


def _heatmap(args):
    from common.config import ConfigError
    from common.inference import class_names_for, load_model
    from common.outdir import check_output_file, check_writable
    from pim.method import PIMMethod

    if os.path.isdir(args.image):
        output = args.output or "heatmaps"
        if output.lower().endswith(".png") or os.path.isfile(output):
            raise ConfigError(f"-output {output}: with a folder -image, -output is a folder (one PNG per image)")
        check_writable(output)
        if args.save_map:
            check_writable(args.save_map)
        jobs = [(path, os.path.join(output, name + ".png"),
                 os.path.join(args.save_map, name + ".npy") if args.save_map else "")
                for path, name in images_in(args.image)]
    else:
        output = args.output or "heatmap.png"
        check_output_file(output, "-output")
        if args.save_map:
            check_output_file(args.save_map, "-save_map")
        jobs = [(args.image, output, args.save_map)]
    method = PIMMethod()
    config, model = load_model(method, args)
    names = class_names_for(config, args.data_path)
    target = _target_index(args.target_class, names)
    head = args.head or method.main_head_of(model)
    kind = args.method if args.method != "auto" else ("gradcam" if model.backbone_only else "tokens")
    transform = method.eval_transform(config)
    for path, png, npy in jobs:
        _one_heatmap(model, method, transform, names, path, png, npy, target, head, kind, args)
    if len(jobs) > 1:
        print(f"wrote {len(jobs)} heat maps under {output}")
    return 0


def _one_heatmap(model, method, transform, names, path, png, npy, target, head, kind, args):
    import paddle

    from common.config import ConfigError
    from common.data.datasets import load_rgb
    from common.data.transforms import view_box
    from common.outdir import atomic_write

    img = load_rgb(path)
    x = paddle.to_tensor(transform(img)[None])
    geometry = transform.steps[:-1]       # the resize and crop, without normalisation
    shown = img
    for step in geometry:
        shown = step(shown)
    with paddle.no_grad():
        heads = method.eval_heads(model, model(x))
    if head not in heads:
        raise ConfigError(f"-head {head} is not one of {', '.join(heads)}")
    probs = paddle.nn.functional.softmax(heads[head].astype("float32"), axis=-1)[0].numpy()
    pred = int(probs.argmax())
    target = pred if target is None else target
    heat = class_heatmap(model, x, target, kind, head, functools.partial(method.eval_heads, model))
    original, full = np.asarray(img), on_original(heat, view_box(geometry, img.size), img.size)
    if full is None:   # a transform whose geometry is not known: show the model's view instead
        original, full = np.asarray(shown.convert("RGB")), heat
    overlay = blend(original, np.nan_to_num(full), args.alpha, args.threshold)
    if full is not heat:
        overlay = np.where(np.isnan(full)[..., None], original, overlay)
    title = f"{names[target]}: p {probs[target]:.3f}" + (
        "" if target == pred else f" (predicted {names[pred]}: {probs[pred]:.3f})") + f", head {head}"
    fig = panels(original, full, overlay, title, ("original", f"{kind} map", "overlay"))
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    if npy:
        def save(tmp):
            with open(tmp, "wb") as f:
                np.save(f, heat.astype(np.float32))
        atomic_write(npy, save)
    print(f"{path}: predicted {names[pred]} ({probs[pred]:.3f}, head {head}); map of class "
          f"{names[target]} ({kind}) written to {png}")


if __name__ == "__main__":
    sys.exit(main())
