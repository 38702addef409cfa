"""Write the digits example's calibration samples and held-out benchmark set (deterministic).

    cd examples/digits && ../../.venv/bin/python make_calibration.py

Needs only numpy and scikit-learn (the project venv). Outputs, both committed:
- `calibration_data/digit_XXX.gray`: CALIBRATION_COUNT training-split images, every digit class
  represented (taken class by class in turn, in split order), in hb_mapper's raw format: the
  tensor as the float model's train view takes it (uint8 gray, NCHW, 1x1x32x32) *before* the
  config's scale_value, written with `numpy.tofile` (no header). The folder name has no `_f32`
  suffix, so hb_compile reads the files as uint8.
- `heldout.npz`: `images` (uint8 N x 1 x 32 x 32) and `labels` (int64) of the 500 held-out
  digits, for the accuracy benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from digits_data import load_split

HERE = Path(__file__).resolve().parent
CALIBRATION_DIR = HERE / "calibration_data"
HELDOUT_PATH = HERE / "heldout.npz"
CALIBRATION_COUNT = 32


def balanced_indices(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices taking the next unused sample of each class in turn, so all classes are calibrated."""
    per_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count:
        for members in per_class:
            if members and len(chosen) < count:
                chosen.append(members.pop(0))
    return np.array(chosen, dtype=np.int64)


def write_calibration(images: np.ndarray, folder: Path) -> list[Path]:
    """One raw uint8 file per sample; stale samples from an earlier run are removed first."""
    folder.mkdir(exist_ok=True)
    for old in folder.glob("digit_*.gray"):
        old.unlink()
    paths = []
    for index, image in enumerate(images):
        path = folder / f"digit_{index:03d}.gray"
        np.ascontiguousarray(image[None], dtype=np.uint8).tofile(path)
        paths.append(path)
    return paths


def main() -> None:
    split = load_split()
    chosen = balanced_indices(split.train_labels, CALIBRATION_COUNT)
    paths = write_calibration(split.train_images[chosen], CALIBRATION_DIR)
    np.savez_compressed(HELDOUT_PATH, images=split.heldout_images, labels=split.heldout_labels)
    print(f"wrote {len(paths)} calibration samples to {CALIBRATION_DIR.name}/ "
          f"and {len(split.heldout_labels)} held-out digits to {HELDOUT_PATH.name}")


if __name__ == "__main__":
    main()
