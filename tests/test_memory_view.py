"""The in-memory path (``resources.pretrain.decode: memory``, :mod:`pretrain.memory_view`): every epoch a
permutation of the whole view, disjoint over ranks, replayable; bad samples counted once; the size guard; a
tiny run that trains and resumes; the spec field and the run key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_device_decode import write_jpeg_view

from harness.plan import make_plan
from harness.spec import parse_spec
from pretrain.loop import DistInfo, TrainConfig, train_loop
from pretrain.memory_view import ViewTooLarge, make_memory_loader
from pretrain.models import load_encoder

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def view(tmp_path_factory) -> Path:
    return write_jpeg_view(tmp_path_factory.mktemp("memory_view"), n=64, shards=3)


def _loader(view: Path, pipeline: str = "image_label", **kw):
    args = dict(pipeline=pipeline, batch_size=8, num_batches=8, image_size=32, seed=1)
    if pipeline == "image_label":
        args["pipeline_options"] = {"num_classes": 4}
    return make_memory_loader(view, **{**args, **kw})


def _keys(loader, epoch: int) -> list[str]:
    loader.set_epoch(epoch)
    return [k for batch in loader for k in batch["__key__"]]


def test_an_epoch_is_a_permutation_of_the_view_and_ranks_are_disjoint(view):
    one = _loader(view)
    keys = _keys(one, 1)
    assert len(keys) == 64 and len(set(keys)) == 64  # every sample once
    assert keys != _keys(one, 2) and keys == _keys(_loader(view), 1)  # a fresh order per epoch, replayable
    ranks = [_keys(_loader(view, num_batches=4, rank=r, world_size=2), 1) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0] + ranks[1]) == 64


def test_a_view_smaller_than_an_epoch_repeats_in_fresh_orders(view):
    keys = _keys(_loader(view, num_batches=12), 1)
    assert len(keys) == 96 and len(set(keys[:64])) == 64 and len(set(keys[64:])) == 32


@pytest.mark.parametrize(
    ("pipeline", "shapes"),
    [("image_label", {"image": (8, 3, 32, 32), "label": (8,)}), ("two_views", {"view1": (8, 3, 32, 32)})],
)
def test_batches_carry_the_pipeline_keys_augmented_batch_wise(view, pipeline, shapes):
    loader = _loader(view, pipeline)
    loader.set_epoch(1)
    batch = next(iter(loader))
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == shape
    assert batch[next(iter(shapes))].dtype == torch.uint8 if pipeline != "image_label" else True
    if pipeline == "two_views":
        assert not torch.equal(batch["view1"], batch["view2"])  # two independent augmentations
    loader.set_epoch(1)
    again = next(iter(loader))
    key = next(iter(shapes))
    assert torch.equal(batch[key], again[key])  # the augmentation replays with the epoch


def test_a_bad_sample_is_left_out_and_counted_once(tmp_path):
    view = write_jpeg_view(tmp_path / "v", n=16, shards=1, png_every=100, undecodable=(5,))
    loader = _loader(view, batch_size=5, num_batches=3)
    assert _keys(loader, 1) and loader.skipped == 1
    keys = _keys(loader, 2)
    assert loader.skipped == 1 and "00000005" not in keys and len(set(keys)) == 15


def test_a_view_too_large_for_memory_names_the_setting(view):
    with pytest.raises(ViewTooLarge, match="decode: memory is for views that fit in memory; use 'cpu' or 'device'"):
        _loader(view, max_bytes=10_000)


def _config(**kw) -> TrainConfig:
    args = dict(
        method="supervised",
        backbone="test_resnet",
        image_size=32,
        samples_seen=256,
        batch_size=16,
        lr=3e-3,
        warmup_fraction=0.1,
        seed=0,
        num_classes=4,
        decode="memory",
    )
    return TrainConfig(**{**args, **kw})


class Crash(Exception):
    pass


def test_a_run_trains_and_a_killed_run_resumes_to_the_same_weights(view, tmp_path):
    seen: list[dict] = []
    train_loop(_config(), view, tmp_path / "straight", DistInfo(), seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in seen)
    assert seen[-1]["samples_seen"] == 256

    def crash_after_second_epoch(record):
        if record["epoch"] == 2:
            raise Crash("killed")

    with pytest.raises(Crash):
        train_loop(_config(), view, tmp_path / "cut", DistInfo(), crash_after_second_epoch)
    summary = train_loop(_config(), view, tmp_path / "cut", DistInfo(), lambda r: None)
    assert summary["resumed_from"] == 2 and summary["epochs_trained"] == 2
    a, _ = load_encoder(tmp_path / "straight" / "checkpoints" / "last.pt")
    b, _ = load_encoder(tmp_path / "cut" / "checkpoints" / "last.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_the_spec_field_takes_memory_and_it_joins_the_run_key():
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    base = {j.key for j in make_plan(parse_spec(data)).of_kind("pretrain")}
    data.setdefault("resources", {}).setdefault("pretrain", {})["decode"] = "memory"
    plan = make_plan(parse_spec(data))
    assert not {j.key for j in plan.of_kind("pretrain")} & base
    assert all(j.config["decode"] == "memory" for j in plan.of_kind("pretrain"))
