"""An existing model's own resizing (issue 16): the interpolation and crop_pct its framework's config
gives (recorded in the checkpoint meta by pretrain/existing.py) are applied wherever the checkpoint's
images are prepared; a harness checkpoint's images are resized exactly as before."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from downstream.features import encode, extract_features, load_features, prepare_images, resize_options
from downstream.sets import resize_center_crop


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _torch_resize(images: np.ndarray, size: int, mode: str) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8)


def test_resize_options_come_from_meta_and_are_empty_for_harness_checkpoints():
    from pretrain.models import build_encoder, encoder_meta

    harness = encoder_meta(build_encoder("resnet18", 32), "resnet18", 32, method="supervised")
    assert resize_options(harness) == {}
    assert resize_options({"interpolation": "bicubic", "crop_pct": 0.9}) == {
        "interpolation": "bicubic",
        "crop_pct": 0.9,
    }
    with pytest.raises(ValueError, match="interpolation 'lanczos2'.*valid: bilinear, bicubic, nearest"):
        resize_options({"interpolation": "lanczos2"})
    with pytest.raises(ValueError, match="crop_pct must be in"):
        resize_options({"interpolation": "bicubic", "crop_pct": 1.5})


def test_a_bicubic_model_gets_bicubic_inputs_and_a_harness_checkpoint_bilinear_as_before():
    images = _images(5, 32)
    bicubic = prepare_images(images, 56, **resize_options({"interpolation": "bicubic", "crop_pct": 0.875}))
    assert torch.equal(bicubic, _torch_resize(images, 56, "bicubic"))  # upsampled: no crop
    default = prepare_images(images, 56, **resize_options({}))
    assert torch.equal(default, _torch_resize(images, 56, "bilinear"))
    assert not torch.equal(bicubic, default)
    assert torch.equal(
        prepare_images(images, 32, interpolation="bicubic"), torch.from_numpy(images).permute(0, 3, 1, 2)
    )


def test_crop_pct_applies_to_images_larger_than_the_model_input():
    images = _images(3, 64, seed=1)
    got = prepare_images(images, 24, interpolation="bilinear", crop_pct=0.75)
    scale = math.floor(24 / 0.75)  # 32, then the centre 24 x 24
    want = _torch_resize(images, scale, "bilinear")[..., 4:28, 4:28]
    assert torch.equal(got, want)
    # real sets go through PIL as timm's eval transform does: same sizes and crop as timm's own
    from PIL import Image
    from timm.data import create_transform

    image = _images(1, 64, seed=2)[0][:, :48]  # 64 x 48, not square
    tf = create_transform(input_size=24, interpolation="bicubic", crop_pct=0.75, mean=(0, 0, 0), std=(1, 1, 1))
    want = (tf(Image.fromarray(image)) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    got = resize_center_crop(image, 24, interpolation="bicubic", crop_pct=0.75)
    assert got.shape == want.shape == (24, 24, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # timm's ToTensor/255 rounding
    assert np.array_equal(resize_center_crop(image, 24), resize_center_crop(image, 24, "bicubic", None))


def test_features_and_finetuning_of_a_model_use_its_interpolation(world, tmp_path, monkeypatch):
    """extract_features of a timm model whose config says bicubic encodes bicubic-resized world images;
    fine-tuning prepares its images with the same options."""
    import timm

    from pretrain.existing import ExistingModel, import_model
    from pretrain.models import load_encoder

    torch.manual_seed(0)
    weights = tmp_path / "tm.pth"
    torch.save(timm.create_model("test_convnext", pretrained=False).state_dict(), weights)
    ckpt = tmp_path / "model.pt"
    import_model(ExistingModel("tm", "timm", "test_convnext", str(weights), image_size=40), ckpt)
    encoder, meta = load_encoder(ckpt)
    assert resize_options(meta)["interpolation"] == "bicubic"  # timm's test_convnext config
    extract_features(ckpt, "dtd", world, tmp_path / "feats", device="cpu")
    from downstream.sets import load_split

    test = load_split("dtd", "test", world)
    want = encode(encoder, _torch_resize(np.asarray(test.images), 40, "bicubic"), meta, device="cpu")
    assert np.array_equal(load_features(tmp_path / "feats", "test")[0], want)

    import downstream.finetune as ft

    seen = []
    real = ft.prepare_images
    monkeypatch.setattr(ft, "prepare_images", lambda im, size, **kw: seen.append(kw) or real(im, size, **kw))
    y = np.asarray(test.labels)[:8] % 2
    imgs = np.asarray(test.images)[:8]
    ft.finetune(
        encoder,
        meta,
        (imgs, y),
        (imgs, y),
        (imgs, y),
        num_classes=2,
        config=ft.FinetuneConfig(epochs=1, lrs=(1e-3,), batch_size=8, min_steps=1),
        device="cpu",
    )
    assert seen and all(kw == resize_options(meta) for kw in seen)
