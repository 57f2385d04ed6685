"""The optional device decode path (``resources.pretrain.decode: device``, :mod:`pretrain.device_decode`), on the CPU:
batched decode against per-sample decode, batch-wise crop/flip/colour, a tiny run, the spec field and the run key."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from harness.plan import make_plan
from harness.spec import SpecError, parse_spec
from pretrain.data import ENCODED_KEY, SimCLRTransform, TrainTransform, decode_image, make_train_loader
from pretrain.device_decode import COLOUR_OPS, augment_batch, decode_batch, for_device, is_jpeg
from pretrain.loop import DistInfo, TrainConfig, train_loop
from pretrain.models import load_encoder

ROOT = Path(__file__).resolve().parent.parent
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 220, 50]], dtype=np.float64)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_jpeg_view(
    root: Path, n: int = 128, shards: int = 2, png_every: int = 16, undecodable: tuple[int, ...] = ()
) -> Path:
    """Labelled JPEG shards (class = colour) of mixed sizes; every ``png_every``-th sample is a PNG (the fallback);
    ``undecodable`` samples are JPEGs cut at their scan (the header reads, the image does not decode)."""
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    sizes, per_shard = {}, -(-n // shards)
    for s in range(shards):
        name = f"shard-{s:06d}.tar"
        idx = range(s * per_shard, min(n, (s + 1) * per_shard))
        with wds.TarWriter(str(root / "shards" / name), mtime=0) as sink:
            for i in idx:
                label = int(rng.integers(len(COLOURS)))
                h, w = (40, 48) if i % 3 else (36, 36)
                img = np.clip(COLOURS[label] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                field, fmt = ("png", "PNG") if i % png_every == 0 else ("jpg", "JPEG")
                data = _encode(img, fmt)
                if i in undecodable:
                    field, data = "jpg", _encode(img, "JPEG")
                    data = data[: data.index(b"\xff\xda")]
                sink.write({"__key__": f"{i:08d}", field: data, "txt": f"colour {label}", "cls": str(label)})
        sizes[name] = len(idx)
    (root / "sizes.json").write_text(json.dumps(sizes))
    return root


@pytest.fixture(scope="module")
def jpeg_view(tmp_path_factory) -> Path:
    return write_jpeg_view(tmp_path_factory.mktemp("jpeg_view"))


def _encoded_batch(view: Path, **kw) -> dict:
    """One loader batch of encoded images (the loader's side of decode: device, without decoding)."""
    loader = make_train_loader(
        view,
        pipeline="image_label",
        batch_size=16,
        num_batches=1,
        image_size=32,
        seed=0,
        pipeline_options={"num_classes": 4, "encoded": True},
        **kw,
    )
    loader.set_epoch(1)
    return next(iter(loader))


def test_batched_decode_equals_per_sample_decode_image(jpeg_view):
    batch = _encoded_batch(jpeg_view)
    encoded = batch[ENCODED_KEY]
    assert len(encoded) == 16 and all(t.dtype == torch.uint8 and t.dim() == 1 for t in encoded)
    kinds = {is_jpeg(t) for t in encoded}
    decoded = decode_batch(encoded, torch.device("cpu"))
    for data, image in zip(encoded, decoded):
        expected = decode_image(data.numpy().tobytes())
        assert image.dtype == torch.uint8 and image.shape == expected.shape
        assert torch.equal(image, expected)
    assert True in kinds  # JPEGs went through the batched decode_jpeg call
    # a PNG among JPEGs goes through the per-sample fallback
    png = torch.frombuffer(bytearray(_encode(np.full((8, 10, 3), 77, np.uint8), "PNG")), dtype=torch.uint8)
    mixed = decode_batch([encoded[0], png], torch.device("cpu"))
    assert not is_jpeg(png) and mixed[1].shape == (3, 8, 10) and int(mixed[1][0, 0, 0]) == 77


def test_batch_augmentation_has_the_size_and_replays_for_a_seed(jpeg_view):
    images = decode_batch(_encoded_batch(jpeg_view)[ENCODED_KEY], torch.device("cpu"))
    for transform in (TrainTransform(24), SimCLRTransform(24)):
        a = augment_batch(images, transform, torch.Generator().manual_seed(5))
        b = augment_batch(images, transform, torch.Generator().manual_seed(5))
        c = augment_batch(images, transform, torch.Generator().manual_seed(6))
        assert a.shape == (16, 3, 24, 24) and a.dtype == torch.uint8
        assert torch.equal(a, b) and not torch.equal(a, c)
    # the flip: with hflip 1 the crop (same draws) comes out mirrored
    no_flip = augment_batch(images, TrainTransform(24, hflip=0.0), torch.Generator().manual_seed(5))
    flip = augment_batch(images, TrainTransform(24, hflip=1.0), torch.Generator().manual_seed(5))
    assert torch.equal(flip, no_flip.flip(-1))


def test_each_batch_colour_op_matches_torchvision_per_image():
    """The batch-wise ops (the memory and device paths) against torchvision's per-image functions
    (the streaming path), a different factor per image: equal within one grey level."""
    images = torch.randint(0, 256, (6, 3, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    factors = {
        TF.adjust_brightness: torch.tensor([0.6, 0.8, 1.0, 1.1, 1.3, 1.4]),
        TF.adjust_contrast: torch.tensor([0.6, 0.8, 1.0, 1.1, 1.3, 1.4]),
        TF.adjust_saturation: torch.tensor([0.6, 0.8, 1.0, 1.1, 1.3, 1.4]),
        TF.adjust_hue: torch.tensor([-0.1, -0.05, 0.0, 0.02, 0.07, 0.1]),
    }
    for (reference, f), op in zip(factors.items(), COLOUR_OPS):
        batch = op(images.float() / 255.0, f).clamp(0, 1).mul(255.0).round().to(torch.uint8)
        each = torch.stack([reference(img, float(v)) for img, v in zip(images, f)])
        gap = (batch.int() - each.int()).abs().max()
        assert gap <= 1, (reference.__name__, int(gap))


def test_the_device_loader_gives_the_pipeline_keys_and_replays_an_epoch(jpeg_view):
    def first(epoch: int) -> dict:
        loader = make_train_loader(
            jpeg_view,
            pipeline="two_views",
            batch_size=8,
            num_batches=2,
            image_size=32,
            seed=3,
            batch_decode=for_device("cpu"),
        )
        loader.set_epoch(epoch)
        return next(iter(loader))

    a, b, c = first(1), first(1), first(2)
    assert ENCODED_KEY not in a and a["view1"].shape == a["view2"].shape == (8, 3, 32, 32)
    assert not torch.equal(a["view1"], a["view2"])  # two independent augmentations
    assert torch.equal(a["view1"], b["view1"]) and not torch.equal(a["view1"], c["view1"])


def test_an_image_that_does_not_decode_is_replaced_with_its_fields_and_counted(tmp_path):
    view = write_jpeg_view(tmp_path / "v", n=16, shards=1, png_every=100, undecodable=(5,))
    loader = make_train_loader(
        view,
        pipeline="image_label",
        batch_size=16,
        num_batches=1,
        image_size=32,
        seed=0,
        shuffle_buffer=1,
        pipeline_options={"num_classes": 4},
        batch_decode=for_device("cpu"),
    )
    loader.set_epoch(1)
    batch = next(iter(loader))
    assert loader.skipped == 1 and batch["image"].shape == (16, 3, 32, 32)
    assert "00000005" not in batch["__key__"] and len(batch["__key__"]) == 16
    first = batch["__key__"].index(batch["__key__"][0])
    twins = [i for i, k in enumerate(batch["__key__"]) if k == batch["__key__"][first]]
    assert len(twins) == 2 and batch["label"][twins[0]] == batch["label"][twins[1]]  # the label went with the image


def test_a_supervised_run_with_device_decode_trains(jpeg_view, tmp_path):
    cfg = TrainConfig(
        method="supervised",
        backbone="test_resnet",
        image_size=32,
        epochs=2,
        save_epochs=(2,),
        batch_size=16,
        lr=3e-3,
        warmup_epochs=0.5,
        seed=0,
        num_classes=4,
        decode="device",
    )
    seen: list[dict] = []
    train_loop(cfg, jpeg_view, tmp_path, DistInfo(), seen.append)
    assert [r["epoch"] for r in seen] == [1, 2] and all(np.isfinite(r["loss"]) for r in seen)
    assert seen[-1]["skipped"] == 0
    encoder, meta = load_encoder(tmp_path / "checkpoints" / "epoch_002.pt")
    assert meta["epoch"] == 2 and encoder(torch.zeros(2, 3, 32, 32)).shape == (2, meta["feature_dim"])
    with pytest.raises(ValueError, match="TrainConfig.decode must be one of cpu, device"):
        TrainConfig(method="supervised", backbone="test_resnet", image_size=32, epochs=1, num_classes=4, decode="gpu")


def _tiny() -> dict:
    return yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def test_the_spec_field_validates_and_device_joins_the_run_key():
    data = _tiny()
    data.setdefault("resources", {}).setdefault("pretrain", {})["decode"] = "gpu"
    with pytest.raises(SpecError) as info:
        parse_spec(data, "test.yaml")
    text = str(info.value)
    assert "resources.pretrain.decode" in text and "'cpu'" in text and "'device'" in text

    base = make_plan(parse_spec(_tiny()))
    data["resources"]["pretrain"]["decode"] = "cpu"
    same = make_plan(parse_spec(data))
    data["resources"]["pretrain"]["decode"] = "device"
    device = make_plan(parse_spec(data))
    keys = lambda plan: {j.key for j in plan.of_kind("pretrain")}  # noqa: E731
    assert keys(same) == keys(base)  # the default keeps every key
    assert not keys(device) & keys(base) and all(j.config["decode"] == "device" for j in device.of_kind("pretrain"))
