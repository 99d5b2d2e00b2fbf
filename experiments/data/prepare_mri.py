"""Turn Debian's ``mricron-data`` brain MRI + AAL atlas into a ``folder`` segmentation dataset.

Source (installed offline from Debian main: ``apt-get install mricron-data``), in
``/usr/share/mricron/templates/``, all on one 181 x 217 x 181 grid of 1 mm voxels (MNI space):

- ``ch2.nii.gz``: "Colin27" (ch2), a T1-weighted MRI of one brain, the average of 27 scans
  (Holmes et al., J Comput Assist Tomogr 1998);
- ``aal.nii.gz`` / ``aal.nii.txt``: the AAL atlas, 116 anatomical regions labelled on that brain
  (Tzourio-Mazoyer et al., NeuroImage 2002), with each region's AAL code (first digit: lobe);
- ``ch2bet.nii.gz``: the same brain with the skull stripped (gives brain tissue AAL leaves unlabelled:
  white matter, ventricles).

Every axial slice is one image (the T1 intensities as a greyscale PNG) and one mask. Classes
(``--classes``):

- ``lobes`` (default, 10 classes): background (outside the brain), other brain tissue (in the
  skull-stripped brain but in no AAL region: mostly white matter), and the AAL regions merged by
  their code's lobe, left and right together (horizontal flips stay label-preserving): frontal, insula,
  limbic, occipital, parietal, subcortical, temporal, cerebellum (with the vermis);
- ``regions`` (60 classes): the same two plus each AAL structure, left and right merged (58).

**Splits are slabs, not interleaved slices**: neighbouring 1 mm slices are near copies, so a validation
slice next to a training slice measures memorisation. The slices that contain AAL labels are cut into
slabs of ``--slab`` consecutive slices assigned in the repeating pattern ``--pattern`` (default
``train,train,val,train,train,test``: held-out slabs spread over the whole brain, so every lobe occurs
in every split), and ``--gap`` slices on each side of every held-out slab are dropped from training
(``--test-gap`` beside the ``test`` slabs, to keep them farther from training).
``val`` is for choosing settings (sweeps); ``test`` is for the final comparison (studies).

**One subject.** Colin27 is a single brain: every split is a different part of the same volume, so a
``test`` score measures generalisation to other slices of this brain, not to a new subject. The
manifest lists each split's separate slabs (``regions``: the independent regions a score rests on)
and how close its nearest slice lies to a training slice (``min_distance_to_train``).

Usage::

    apt-get install mricron-data          # or: apt-get download mricron-data && dpkg-deb -x ...
    pip install nibabel                   # in the project's dev extras
    python experiments/data/prepare_mri.py --out data/mri
    raycontrast train experiments/mri.yaml

Output: ``OUT/images/<split>/z<NNN>.png``, ``OUT/masks/<split>/z<NNN>.png``, ``OUT/classes.txt`` and
``OUT/manifest.json`` (source files with SHA-256, slices per split, class pixel counts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np

DEFAULT_SRC = "/usr/share/mricron/templates"
LOBES = {
    "2": "frontal",
    "3": "insula",
    "4": "limbic",
    "5": "occipital",
    "6": "parietal",
    "7": "subcortical",
    "8": "temporal",
    "9": "cerebellum",
}


def read_atlas_table(path: Path) -> list[tuple[int, str, str]]:
    """``aal.nii.txt`` rows: (label value, region name, AAL code)."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            rows.append((int(parts[0]), parts[1], parts[2]))
    if not rows:
        raise SystemExit(f"{path}: no 'value name code' rows found")
    return rows


def class_table(rows: list[tuple[int, str, str]], kind: str) -> tuple[list[str], dict[int, int]]:
    """Class names and the map from AAL label value to class id (0 background, 1 other brain)."""
    names = ["background", "other_brain"]
    lut: dict[int, int] = {}
    for value, name, code in rows:
        if kind == "lobes":
            group = LOBES.get(code[0])
            if group is None:
                raise SystemExit(f"AAL code {code} of {name}: unknown lobe digit {code[0]!r}")
        else:
            group = re.sub(r"_(L|R)$", "", name)
        if group not in names:
            names.append(group)
        lut[value] = names.index(group)
    return names, lut


def split_slabs(
    slices: list[int], slab: int, gap: int, pattern: list[str], test_gap: int | None = None
) -> dict[str, list[int]]:
    """Assign consecutive ``slab``-slice blocks of ``slices`` to splits in the repeating ``pattern``;
    training slices within ``gap`` of a held-out slab are dropped (they would be near copies), and
    within ``test_gap`` (default ``gap``) of a ``test`` slab: a wider margin keeps the test slabs
    farther from every training slice, at the cost of training slices."""
    test_gap = gap if test_gap is None else test_gap
    assign = {z: pattern[(i // slab) % len(pattern)] for i, z in enumerate(slices)}
    held = [(z, test_gap if s == "test" else gap) for z, s in assign.items() if s != "train"]
    out: dict[str, list[int]] = {s: [] for s in dict.fromkeys(pattern)}
    for z, split in assign.items():
        if split == "train" and any(abs(z - h) <= g for h, g in held):
            continue
        out[split].append(z)
    return out


def regions(zs: list[int]) -> list[list[int]]:
    """The contiguous runs of slice indices (``[first, last]`` each): a split's independent regions."""
    runs: list[list[int]] = []
    for z in sorted(zs):
        if runs and z == runs[-1][1] + 1:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    return runs


def train_distance(splits: dict[str, list[int]], split: str) -> int | None:
    """The smallest distance (slices) from a slice of ``split`` to a training slice."""
    train = splits.get("train") or []
    zs = splits.get(split) or []
    return min((abs(z - t) for z in zs for t in train), default=None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` as rows = anterior (top) to posterior, columns = the x axis."""
    return np.ascontiguousarray(volume[:, :, z].T[::-1])


def _fit(array: np.ndarray, scale: float, multiple: int, nearest: bool) -> np.ndarray:
    """Resize by ``scale`` (area for images, nearest for labels), then pad to a multiple of
    ``multiple`` (with 0: black image, background label)."""
    from PIL import Image

    h, w = array.shape
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BOX
        array = np.asarray(Image.fromarray(array).resize(size, resample))
    h, w = array.shape
    ph, pw = -h % multiple, -w % multiple
    return np.pad(array, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def prepare(
    src: Path,
    out: Path,
    classes: str = "lobes",
    slab: int = 10,
    gap: int = 2,
    pattern: tuple[str, ...] = ("train", "train", "val", "train", "train", "test"),
    scale: float = 0.5,
    multiple: int = 16,
    test_gap: int | None = None,
) -> dict:
    """Write the folder dataset; returns the manifest."""
    import nibabel as nib
    from PIL import Image

    files = {k: src / f for k, f in
             (("t1", "ch2.nii.gz"), ("atlas", "aal.nii.gz"), ("table", "aal.nii.txt"),
              ("brain", "ch2bet.nii.gz"))}  # fmt: skip
    for path in files.values():
        if not path.is_file():
            raise SystemExit(f"{path}: not found; install Debian's mricron-data or pass --src")
    t1 = np.asanyarray(nib.load(files["t1"]).dataobj)
    atlas = np.asanyarray(nib.load(files["atlas"]).dataobj).astype(np.int64)
    brain = np.asanyarray(nib.load(files["brain"]).dataobj)
    if not t1.shape == atlas.shape == brain.shape:
        raise SystemExit(f"grids differ: t1 {t1.shape}, atlas {atlas.shape}, brain {brain.shape}")
    names, lut = class_table(read_atlas_table(files["table"]), classes)
    table = np.ones(int(atlas.max()) + 1, dtype=np.uint8)  # 1: brain voxel outside every region
    for value, cls in lut.items():
        if value < len(table):
            table[value] = cls
    labels = table[atlas]
    labels[(atlas == 0) & (brain == 0)] = 0
    image = np.clip(t1.astype(np.float64), 0, 255).astype(np.uint8)

    slices = [int(z) for z in np.where((atlas > 0).any(axis=(0, 1)))[0]]
    splits = split_slabs(slices, slab, gap, list(pattern), test_gap)
    counts = np.zeros(len(names), dtype=np.int64)
    for split, zs in splits.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for z in zs:
            img = _fit(_slice(image, z), scale, multiple, nearest=False)
            lab = _fit(_slice(labels, z), scale, multiple, nearest=True)
            Image.fromarray(img).save(out / "images" / split / f"z{z:03d}.png")
            Image.fromarray(lab).save(out / "masks" / split / f"z{z:03d}.png")
            if split == "train":
                counts += np.bincount(lab.ravel(), minlength=len(names))
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    manifest = {
        "source": "Debian package mricron-data (Colin27 T1 'ch2', AAL atlas, skull-stripped ch2bet)",
        "files": {k: {"path": str(p), "sha256": _sha256(p)} for k, p in files.items()},
        "classes": names,
        "class_set": classes,
        "slices": {s: zs for s, zs in splits.items()},
        "counts": {s: len(zs) for s, zs in splits.items()},
        "slab": slab,
        "gap": gap,
        "test_gap": gap if test_gap is None else test_gap,
        # one subject: a split's independent evidence is its number of separate slabs, not slices
        "regions": {s: regions(zs) for s, zs in splits.items()},
        "min_distance_to_train": {s: train_distance(splits, s) for s in splits if s != "train"},
        "pattern": list(pattern),
        "scale": scale,
        "image_size": list(img.shape),
        "train_pixels_per_class": dict(zip(names, counts.tolist())),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=DEFAULT_SRC, help="mricron-data templates folder")
    p.add_argument("--out", required=True, help="output folder (a `folder` dataset root)")
    p.add_argument("--classes", choices=("lobes", "regions"), default="lobes")
    p.add_argument("--slab", type=int, default=10, help="slices per slab")
    p.add_argument(
        "--gap", type=int, default=2, help="training slices dropped beside held-out slabs"
    )
    p.add_argument(
        "--test-gap",
        type=int,
        default=None,
        help="training slices dropped beside test slabs (default: --gap); e.g. 10 keeps every test "
        "slice at least 11 slices (mm) from training",
    )
    p.add_argument(
        "--pattern", default="train,train,val,train,train,test", help="slab splits, repeated"
    )
    p.add_argument("--scale", type=float, default=0.5, help="resize factor (1 mm -> 2 mm pixels)")
    args = p.parse_args(argv)
    manifest = prepare(
        Path(args.src),
        Path(args.out),
        classes=args.classes,
        slab=args.slab,
        gap=args.gap,
        pattern=tuple(s.strip() for s in args.pattern.split(",")),
        scale=args.scale,
        test_gap=args.test_gap,
    )
    print(
        f"{args.out}: {len(manifest['classes'])} classes, slices {manifest['counts']}, "
        f"images {manifest['image_size'][0]}x{manifest['image_size'][1]}; one subject: "
        f"{len(manifest['regions'].get('test', []))} separate test slab(s), the nearest "
        f"{manifest['min_distance_to_train'].get('test')} slice(s) from training"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
