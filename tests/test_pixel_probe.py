"""bench/pixel_probe.py: the raw-pixel linear probe the calibration is read against."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import pixel_probe  # noqa: E402


def test_pixels_flattens_in_unit_range():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    x[1, 0, 0, 0] = 255
    p = pixel_probe.pixels(x)
    assert p.shape == (2, 48) and p.dtype == np.float32 and p.max() == 1.0 and p[0].max() == 0.0


def test_centred_objects_separate_from_pixels_and_the_report_line_names_every_set(world, synthetic_store_root, capsys):
    # caltech101's objects are centred, barely jittered: a linear model of the pixels separates them
    cal = pixel_probe.pixel_score("caltech101", world)
    assert cal["pixels"] > cal["chance"] + 0.15
    assert pixel_probe.main(["--store", str(synthetic_store_root), "--world-dir", str(world)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "pixel_probe" and set(last["per_set"]) == set(pixel_probe.WORLD_SETS)
    # the synthetic store has a floor and encoders on cifar100 and pets only
    assert last["per_set"]["pets"]["random_init"] is not None and last["per_set"]["pets"]["best_config"]
    assert last["per_set"]["dtd"]["best"] is None and last["per_set"]["dtd"]["random_init"] is None
