"""Build the colour dataset `tuxpaint_stamps` shipped in ``amcl_keras/data/``.

The sources are the PNG stamps of the Debian package ``tuxpaint-stamps-default`` (Tux Paint's
stamp collection, GPL-2-or-later; most are photographs cut out on a transparent background):

    apt-get install -y tuxpaint-stamps-default
    python scripts/build_tuxpaint_stamps.py

Classes are groups of stamp folders (``CLASSES``): photographs only, except ``buildings`` (Tux
Paint has drawings only there); folders named ``cartoon`` (drawings) and the toy/symbol
folders are left out. Every source image belongs to exactly one split (stratified per class,
about 70/15/15, by a seeded shuffle), and the crops of a split come only from its own source
images, so no object is shared between train, val and test.

Each 32x32x3 uint8 image is one random crop of one source image: the stamp is composited over
a fixed mid-grey (128, 128, 128) by its alpha channel; a crop covering 50-100% of the area of
the object's bounding box (alpha > 16), aspect ratio in [3/4, 4/3], lies at a random place in
the box; it is widened to a square (side x 1.0-1.2, centred on the crop, grey outside the
stamp), resized to 32x32 (area average; bicubic where the square is under 32 pixels) and flipped
horizontally with p = 0.5. The
crops are spread evenly over the sources of each class, and every class gets the same number
of images per split. The script also writes LICENSE-tuxpaint-stamps.txt (licence, package
version, source files per class and split).
"""

import argparse
import hashlib
import pathlib
import subprocess
import textwrap

import numpy as np
from PIL import Image

SOURCE = pathlib.Path("/usr/share/tuxpaint/stamps")
PACKAGE = "tuxpaint-stamps-default"
DATA = pathlib.Path(__file__).resolve().parents[1] / "amcl_keras" / "data"
TARGET = DATA / "tuxpaint_stamps.npz"
LICENSE = DATA / "LICENSE-tuxpaint-stamps.txt"
GPL2 = pathlib.Path("/usr/share/common-licenses/GPL-2")
BACKGROUND = 128  # mid-grey behind the transparent pixels
SIZE = 32

# class name -> (stamp folders, relative to SOURCE; "**" takes subfolders too, except EXCLUDED ones)
CLASSES = {
    "birds": ["animals/birds"],
    "mammals": ["animals/mammals/**", "animals/marsupials"],
    "other_animals": ["animals/fish", "animals/insects", "animals/shellfish", "animals/amphibians", "animals/lizards"],
    "fruit": ["food/fruit"],
    "vegetables": ["food/vegetables", "food/nuts", "food/spices", "plants/mushrooms"],
    "flowers": ["plants/flowers/**"],
    "coins": ["symbols/money/canadian/coins", "symbols/money/euro/coins", "symbols/money/japanese",
              "symbols/money/us/coins"],
    "buildings": ["town/houses/cartoon"],
}
EXCLUDED = ("cartoon", "toys")  # subfolders left out of "**": drawings, toy animals


def source_files(source, folders):
    files = []
    for folder in folders:
        if folder.endswith("/**"):
            root = source / folder[:-3]
            files += [f for f in root.rglob("*.png") if not set(f.relative_to(root).parts[:-1]) & set(EXCLUDED)]
        else:
            files += (source / folder).glob("*.png")
    return sorted(files)


def composite(path):
    """The stamp over mid-grey, float RGB [H, W, 3], and its object bounding box (x0, y0, x1, y1)."""
    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA"), np.float64)
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + BACKGROUND * (1.0 - alpha)
    ys, xs = np.nonzero(rgba[..., 3] > 16)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, rgb.shape[1], rgb.shape[0])
    return rgb, box


def random_crop(rgb, box, rng):
    """One 32x32 uint8 crop (see the module docstring)."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    area = rng.uniform(0.5, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    fw = min(1.0, np.sqrt(area * ratio))
    fh = min(1.0, area / fw)
    cw, ch = fw * bw, fh * bh
    cx = x0 + rng.uniform(0, bw - cw) + cw / 2
    cy = y0 + rng.uniform(0, bh - ch) + ch / 2
    side = max(cw, ch) * rng.uniform(1.0, 1.2)
    pad = int(np.ceil(side)) + 2  # grey around the stamp, so the square may reach past its edges
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), constant_values=BACKGROUND)
    image = Image.fromarray(np.clip(np.round(padded), 0, 255).astype(np.uint8))
    crop_box = (cx - side / 2 + pad, cy - side / 2 + pad, cx + side / 2 + pad, cy + side / 2 + pad)
    resample = Image.BOX if side >= SIZE else Image.BICUBIC  # BOX: area average (antialiased; compresses better)
    out = image.resize((SIZE, SIZE), resample, box=crop_box)
    if rng.uniform() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, np.uint8)


def split_sources(files, rng, fraction):
    """Seeded shuffle, then val and test take round(fraction * n) sources each (at least 2), train the rest."""
    order = [files[i] for i in rng.permutation(len(files))]
    n_held = max(2, int(round(fraction * len(files))))
    return {"val": sorted(order[:n_held]), "test": sorted(order[n_held : 2 * n_held]), "train": sorted(order[2 * n_held :])}


def package_version(package):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=pathlib.Path, default=SOURCE)
    parser.add_argument("--out", type=pathlib.Path, default=TARGET)
    parser.add_argument("--license-out", type=pathlib.Path, default=LICENSE)
    parser.add_argument("--train-per-class", type=int, default=625)
    parser.add_argument("--eval-per-class", type=int, default=125, help="images per class in val and in test")
    parser.add_argument("--held-out-fraction", type=float, default=0.15, help="sources per class in val (and test)")
    parser.add_argument("--min-sources", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    names = list(CLASSES)
    per_split = {"train": args.train_per_class, "val": args.eval_per_class, "test": args.eval_per_class}
    arrays = {f"{split}_{kind}": [] for split in per_split for kind in ("images", "labels")}
    listing, seen_sources, seen_crops = {}, {}, set()
    for label, name in enumerate(names):
        files = []
        for path in source_files(args.source, CLASSES[name]):
            digest = hashlib.sha256(np.asarray(Image.open(path).convert("RGBA")).tobytes()).hexdigest()
            if digest in seen_sources:  # the same picture under two names: keep the first
                print(f"skip duplicate {path} (= {seen_sources[digest]})")
                continue
            seen_sources[digest] = path
            files.append(path)
        if len(files) < args.min_sources:
            raise SystemExit(f"class {name!r} has {len(files)} source images, fewer than --min-sources {args.min_sources}")
        splits = split_sources(files, rng, args.held_out_fraction)
        listing[name] = splits
        for split, count in per_split.items():
            sources = [composite(path) for path in splits[split]]
            for i in range(count):  # round robin: every source gives count // len(sources) or one more crop
                while True:
                    crop = random_crop(*sources[i % len(sources)], rng)
                    key = crop.tobytes()
                    if key not in seen_crops:  # no identical image twice (in any split)
                        seen_crops.add(key)
                        break
                arrays[f"{split}_images"].append(crop)
                arrays[f"{split}_labels"].append(label)
    out = {}
    for split in per_split:
        order = rng.permutation(len(arrays[f"{split}_labels"]))
        out[f"{split}_images"] = np.stack(arrays[f"{split}_images"])[order]
        out[f"{split}_labels"] = np.asarray(arrays[f"{split}_labels"], np.int64)[order]
    out["class_names"] = np.array(names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    write_license(args, names, listing, per_split)
    print(f"{'class':<14}" + "".join(f"{s:>16}" for s in per_split) + "   (images / source images)")
    for label, name in enumerate(names):
        print(f"{name:<14}" + "".join(f"{int((out[f'{s}_labels'] == label).sum()):>10} / {len(listing[name][s]):>3}"
                                      for s in per_split))
    print({k: v.shape for k, v in out.items()}, args.out, args.out.stat().st_size, "bytes")


def write_license(args, names, listing, per_split):
    version = package_version(PACKAGE)
    lines = [
        "tuxpaint_stamps.npz holds 32x32 RGB (uint8) crops of the stamp pictures of Tux Paint, from the",
        f"Debian package {PACKAGE}, version {version} (upstream tuxpaint-stamps,",
        "https://tuxpaint.org/ , https://sourceforge.net/projects/tuxpaint ). scripts/build_tuxpaint_stamps.py",
        f"builds it (seed {args.seed}). Class names, in label order:",
        f"    {', '.join(names)}.",
        "",
        "Licence",
        "-------",
        "The Debian copyright file of the package (/usr/share/doc/tuxpaint-stamps-default/copyright) states",
        "for all of its files:",
        "",
        "    Copyright: 2002-2022 by Bill Kendrick <bill@newbreedsoftware.com>",
        "    License: GPL-2 (\"either version 2 of the License, or (at your option) any later version\")",
        "",
        "The package has no per-stamp licence notes (each stamp's .txt file holds only its description in",
        "several languages), so every source image used here is under the GNU General Public License,",
        "version 2 or later, and so is tuxpaint_stamps.npz, a modified version of them (cropped, composited",
        "over grey, resized). It is shipped alongside the code of amcl_keras, which is under Apache-2.0,",
        "as a separate data file: this licence, not Apache-2.0, applies to it. The preferred form of the",
        "images for modification is the original PNG files, listed below: they are in the Debian package",
        "(source package tuxpaint-stamps) and in upstream's tuxpaint-stamps 2022.06.04 release;",
        "scripts/build_tuxpaint_stamps.py turns them into the .npz.",
        "",
        "    This program is free software; you can redistribute it and/or modify it under the terms of",
        "    the GNU General Public License as published by the Free Software Foundation; either version 2",
        "    of the License, or (at your option) any later version.",
        "",
        "    This program is distributed in the hope that it will be useful, but WITHOUT ANY WARRANTY;",
        "    without even the implied warranty of MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.",
        "    See the GNU General Public License for more details.",
        "",
        "The full text of the GPL version 2 is at the end of this file.",
        "",
        "How the images were made",
        "------------------------",
        "Classes are groups of stamp folders (photographs cut out on a transparent background; the",
        "buildings class: drawings); subfolders named 'cartoon' (drawings) and 'toys' are left out, and a",
        "picture present under two names is used once. Each source image belongs to exactly one split,",
        f"chosen per class by a seeded shuffle: val and test take round({args.held_out_fraction} x n) sources each,",
        "train the rest; the crops of a split come only from its own sources. Every class has",
        f"{per_split['train']} train, {per_split['val']} val and {per_split['test']} test images, spread evenly over its sources.",
        "One image = one random crop: the stamp composited over mid-grey (128, 128, 128) by its alpha",
        "channel; a crop covering 50-100% of the area of the object's bounding box (alpha > 16), aspect",
        "ratio 3/4-4/3, at a random place in the box; widened to a square (x1.0-1.2, grey beyond the",
        "stamp), resized to 32x32 (area average; bicubic where the square is under 32 pixels) and flipped",
        "horizontally with probability 0.5. No two images in the file are identical.",
        "",
        "Source files per class and split (paths under /usr/share/tuxpaint/stamps/)",
        "-------------------------------------------------------------------------",
    ]
    for name in names:
        folders = ", ".join(CLASSES[name])
        lines += ["", f"{name} (folders: {folders})"]
        for split in ("train", "val", "test"):
            files = [str(path.relative_to(args.source)) for path in listing[name][split]]
            lines += textwrap.wrap(f"{split} ({len(files)}): " + ", ".join(files), 100, initial_indent="  ",
                                   subsequent_indent="    ", break_on_hyphens=False)
    lines += ["", "", "GNU GENERAL PUBLIC LICENSE, version 2", "-------------------------------------", ""]
    lines += GPL2.read_text().splitlines() if GPL2.is_file() else ["See https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt"]
    args.license_out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
