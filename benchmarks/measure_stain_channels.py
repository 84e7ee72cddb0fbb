"""Which stain channel separates white cells best? Measured on the sample's masks.

Usage: python benchmarks/measure_stain_channels.py [--data DIR] [--gamma G]

For each candidate channel (oriented so that white cells are high) and each masked image of
../shared/data/brightfield_sample: the AUC of white-cell pixels against all other valid pixels
(how well any threshold could separate them), and the IoU with the mask of a plain Otsu
threshold of the valid pixels after a 3x3 opening. Prints the means per image kind. With
`--gamma`, each image is first given that gamma (another camera's response curve): a channel
whose IoU stays put under it is what thresholds fixed in its units need.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
from skimage.filters import threshold_otsu

from bench_brightfield import default_data_dir


def channels(rgb: np.ndarray) -> dict[str, np.ndarray]:
    f = rgb.astype(np.float32) / 255
    red, green, blue = f[..., 0], f[..., 1], f[..., 2]
    top, bottom = f.max(2), f.min(2)
    black = 1 - top
    lab_b = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[..., 2].astype(np.float32)
    return {
        "HSV saturation": np.where(top > 0, (top - bottom) / np.maximum(top, 1e-6), 0),
        "B/(R+G+B)": blue / np.maximum(red + green + blue, 1e-6),
        "CMYK magenta": (1 - green - black) / np.maximum(1 - black, 1e-6),
        "CMYK 1-yellow": 1 - (1 - blue - black) / np.maximum(1 - black, 1e-6),
        "B-G": blue - green,
        "B-R": blue - red,
        "1-G": 1 - green,
        "Lab -b*": 128 - lab_b,
        "OD red share": _od_red_share(f),
    }


def _od_red_share(f: np.ndarray) -> np.ndarray:
    """Optical density of the red channel as a share of the three, each channel's density
    taken against the image's background (its 99th percentile): haematoxylin and azure absorb
    red, eosin and haemoglobin green, so nuclei are high and red cells low. A power-law gamma,
    an exposure or a white balance scales every density alike, so the share does not move; the
    denominator has a floor of a tenth of the median density, so the background is near 0."""
    white = np.percentile(f.reshape(-1, 3), 99, axis=0)
    density = -np.log10(np.clip(f / np.maximum(white, 1e-6), 1e-3, 1.0))
    total = density.sum(2)
    floor = 0.1 * float(np.median(total)) + 1e-6
    return density[..., 0] / np.maximum(total, floor)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    ranks = np.concatenate([positive, negative]).argsort().argsort() + 1
    n = len(positive)
    return (ranks[:n].sum() - n * (n + 1) / 2) / (n * len(negative))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--gamma", type=float, default=1.0, help="gamma given to each image")
    args = parser.parse_args()
    data = args.data
    with open(data / "MASKS.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    rng = np.random.default_rng(0)
    scores: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        rgb = cv2.cvtColor(cv2.imread(str(data / row["image_relpath"])), cv2.COLOR_BGR2RGB)
        if args.gamma != 1.0:
            rgb = (255 * (rgb / 255.0) ** args.gamma).round().astype(np.uint8)
        truth = cv2.imread(str(data / row["mask_relpath"]), cv2.IMREAD_GRAYSCALE) > 64
        valid = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) > 40
        kind = row["image_relpath"].split("/")[0]
        for name, channel in channels(rgb).items():
            found = (channel > threshold_otsu(channel[valid])) & valid
            found = cv2.morphologyEx(found.view(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3)))
            found = found.view(bool)
            iou = (found & truth).sum() / max((found | truth).sum(), 1)
            positive, negative = channel[truth & valid], channel[~truth & valid]
            positive = rng.choice(positive, min(20000, positive.size), replace=False)
            negative = rng.choice(negative, min(20000, negative.size), replace=False)
            scores.setdefault((name, kind), []).append((auc(positive, negative), iou))
    print(
        f"{'channel':16s} {'fields AUC':>10s} {'fields IoU':>10s} {'crops AUC':>9s} {'crops IoU':>9s}"
    )
    for name in channels(np.zeros((1, 1, 3), np.uint8)):
        cells = [np.mean(scores[(name, kind)], axis=0) for kind in ("fields", "crops")]
        print(
            f"{name:16s} {cells[0][0]:10.3f} {cells[0][1]:10.3f} {cells[1][0]:9.3f} {cells[1][1]:9.3f}"
        )


if __name__ == "__main__":
    main()
