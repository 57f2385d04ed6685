"""The downstream registry and split loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation import world as W
from downstream import sets
from downstream.sets import DOWNSTREAM, load_split

SCALE = 0.1


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The session's world (shared with the other test files: build_world is idempotent)."""
    d = tmp_path_factory.getbasetemp() / f"tbench-world-{SCALE}"
    W.build_world(d, seed=0, scale=SCALE)
    return d


def test_registry():
    world_sets = {"cifar100", "dtd", "caltech101", "pets", "domainnet_real", "domainnet_clipart", "eurosat",
                  "cameratraps", "cassava"}
    assert set(DOWNSTREAM.names()) == world_sets | {"digits", "textures"}
    assert DOWNSTREAM.get("cameratraps").metric == "balanced_acc"
    assert all(DOWNSTREAM.get(n).metric == "top1" for n in DOWNSTREAM.names() if n != "cameratraps")
    assert {DOWNSTREAM.get(n).origin for n in ("digits", "textures")} == {"package"}
    assert {DOWNSTREAM.get(n).origin for n in world_sets} == {"world"}
    with pytest.raises(KeyError, match="unknown downstream set 'cifar10'.*Did you mean 'cifar100'"):
        DOWNSTREAM.get("cifar10")


@pytest.mark.parametrize("name", sorted(DOWNSTREAM.names()))
def test_load_split(world, name):
    sizes = {}
    for split in ("train", "validation", "test"):
        d = load_split(name, split, world)
        assert d.images.dtype == np.uint8 and d.images.ndim == 4 and d.images.shape[1:] == (32, 32, 3)
        assert d.labels.dtype == np.int64 and d.labels.shape == (len(d.images),)
        assert d.labels.min() >= 0 and d.labels.max() < len(d.class_names)
        sizes[split] = len(d.labels)
    assert sizes["train"] > sizes["test"] > 0
    assert len(np.unique(load_split(name, "train", world).labels)) == len(d.class_names)


def test_cache_and_errors(world, tmp_path):
    a = load_split("pets", "train", world)
    assert load_split("pets", "train", Path(str(world))) is a  # served from the cache
    assert not a.images.flags.writeable
    with pytest.raises(ValueError, match="valid splits: train, validation, test"):
        load_split("pets", "val", world)
    with pytest.raises(FileNotFoundError, match=r"tbench world"):
        load_split("pets", "train", tmp_path)
    sets.clear_cache()
    assert load_split("pets", "train", world) is not a
