"""GPU-ready evaluation paths, checked on the CPU: precision choice, CPU bf16 autocast, batch-wise
augmentation on tensors, feature extraction without per-batch copies, fused AdamW only on CUDA."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from downstream import accel
from downstream.features import encode, prepare_images
from downstream.finetune import FinetuneConfig, augment_batch, finetune
from pretrain.models import build_encoder, encoder_meta
from pretrain.optim import adamw_kwargs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_precision_picks_bf16_on_cuda_and_fp32_on_cpu_by_default():
    assert accel.amp_dtype("cpu") is None
    assert accel.amp_dtype(torch.device("cuda")) is torch.bfloat16  # a pure choice: no GPU needed
    assert accel.amp_dtype("cpu", "bf16") is torch.bfloat16
    assert accel.amp_dtype("cuda", "fp32") is None
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        accel.amp_dtype("cpu", "fp16")


def test_autocast_runs_bf16_on_the_cpu_only_when_asked():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with accel.autocast("cpu"):
        assert layer(x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with accel.autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_cuda_settings_only_for_cuda_devices(monkeypatch):
    entered = []
    monkeypatch.setattr(accel, "_cuda_flags", lambda: entered.append(1) or contextlib.nullcontext())
    saved = torch.backends.cudnn.benchmark
    for precision in accel.PRECISIONS:
        with accel.autocast("cpu", precision):
            pass
    assert entered == [] and torch.backends.cudnn.benchmark == saved
    x = torch.zeros(2, 3, 4, 4)
    assert accel.to_device(x, "cpu") is x and accel.resident(x, "cpu") is x
    assert accel.images_layout(x).is_contiguous(memory_format=torch.channels_last)  # every device
    assert not accel.pinned(x, "cpu").is_pinned()
    assert adamw_kwargs("cpu") == {"fused": True} and adamw_kwargs(torch.device("cuda", 0)) == {"fused": True}
    assert adamw_kwargs("mps") == {}


def test_cuda_flags_are_restored_on_exit():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    with accel._cuda_flags():
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == saved


def _encoder():
    torch.manual_seed(0)
    encoder = build_encoder("test_resnet", 16)
    return encoder, encoder_meta(encoder, "test_resnet", 16)


def test_features_in_bf16_are_close_to_fp32_and_chunked_copies_change_nothing(monkeypatch):
    encoder, meta = _encoder()
    images = prepare_images(np.random.default_rng(0).integers(0, 255, (40, 16, 16, 3), dtype=np.uint8), 16)
    fp32 = encode(encoder, images, meta, batch_size=8)
    monkeypatch.setattr("downstream.features._FLUSH_ROWS", 16)  # several host copies
    assert np.array_equal(encode(encoder, images, meta, batch_size=8), fp32)
    bf16 = encode(encoder, images, meta, batch_size=8, precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape and not np.array_equal(bf16, fp32)
    assert np.abs(bf16 - fp32).max() <= 0.05 * np.abs(fp32).max()


def test_batch_augmentation_draws_the_same_crops_whatever_the_batch_holds():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    a = augment_batch(x, torch.Generator().manual_seed(3), pad=2)
    b = augment_batch(x.clone(), torch.Generator().manual_seed(3), pad=2)
    assert torch.equal(a, b)
    for i in range(6):  # each output is a shifted (zero-filled) window of its own image, maybe mirrored
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)


def test_finetune_runs_in_bf16_on_the_cpu_when_asked():
    encoder, meta = _encoder()
    rng = np.random.default_rng(1)
    splits = [(rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8), np.tile(np.arange(4), n // 4)) for n in (16, 8, 8)]
    cfg = FinetuneConfig(epochs=1, lrs=(1e-3,), batch_size=8)
    res = finetune(encoder, meta, *splits, num_classes=4, config=cfg, device="cpu", precision="bf16")
    assert np.isfinite(res.curve[0]["train_loss"]) and 0 <= res.test["top1"] <= 1
    with pytest.raises(ValueError, match="precision"):
        finetune(encoder, meta, *splits, num_classes=4, config=cfg, device="cpu", precision="half")


# --------------------------------------------------------------------------- pre-training and the plan


def test_loader_workers_auto_uses_the_cpus_beside_a_gpu_and_none_on_a_cpu():
    from pretrain.loop import loader_workers_for

    assert loader_workers_for("auto", cpus_per_worker=16, gpus_per_worker=1) == 8  # capped
    assert loader_workers_for("auto", cpus_per_worker=4, gpus_per_worker=1) == 3  # one CPU for training
    assert loader_workers_for("auto", cpus_per_worker=1, gpus_per_worker=0.5) == 0
    assert loader_workers_for("auto", cpus_per_worker=16, gpus_per_worker=0) == 0  # CPU: decode in-process
    assert loader_workers_for(3, cpus_per_worker=1, gpus_per_worker=0) == 3  # given: taken as it is
    with pytest.raises(ValueError, match="loader_workers must be 'auto' or an int >= 0"):
        loader_workers_for(-1, 4, 1)


def _tiny_spec() -> dict:
    from pathlib import Path

    import yaml

    return yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml").read_text())


def test_spec_loader_workers_default_auto_and_bad_values_name_the_field():
    from harness.spec import SpecError, parse_spec

    assert parse_spec(_tiny_spec()).resources.pretrain.loader_workers == "auto"
    data = _tiny_spec()
    data.setdefault("resources", {}).setdefault("pretrain", {})["loader_workers"] = "many"
    with pytest.raises((SpecError, ValueError), match="loader_workers"):
        parse_spec(data)


def test_linear_probes_hold_no_gpu_and_their_rows_say_cpu():
    from downstream.protocols import PROTOCOLS
    from harness.plan import make_plan
    from harness.spec import parse_spec

    assert PROTOCOLS.get("linear").runs_on_cpu
    assert not any(PROTOCOLS.get(p).runs_on_cpu for p in ("finetune", "lp_ft", "zeroshot", "scratch"))
    data = _tiny_spec()
    data.setdefault("resources", {})["eval"] = {"num_cpus": 2, "num_gpus": 0.25}
    plan = make_plan(parse_spec(data))
    evals = plan.of_kind("eval")
    by_protocol = {j.coords["protocol"]: j.resources for j in evals}
    assert by_protocol["linear"] == {"num_cpus": 2, "num_gpus": 0}
    assert all(r == {"num_cpus": 2, "num_gpus": 0.25} for p, r in by_protocol.items() if p != "linear")
    assert {j.resources["num_gpus"] for j in plan.of_kind("features")} == {0.25}  # extraction uses the GPU


def test_the_curation_clip_scorer_puts_its_model_on_the_default_device(tmp_path, monkeypatch):
    import io

    from PIL import Image
    from test_downstream import _clip_checkpoint

    from curation import views
    from downstream import features

    ckpt = _clip_checkpoint(tmp_path / "clip.pt")
    placed = []
    monkeypatch.setattr(features, "default_device", lambda: torch.device("cpu"))
    real = accel.prepare_model
    monkeypatch.setattr(
        accel, "prepare_model", lambda m, d: placed.append((type(m).__name__, torch.device(d))) or real(m, d)
    )
    monkeypatch.setattr(views, "_SCORERS", {})
    score = views._checkpoint_scorer(str(ckpt))
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), 120, dtype=np.uint8)).save(buf, format="PNG")
    s = score([buf.getvalue()] * 2, ["a red square", "a blue circle"])
    assert placed == [("CLIP", torch.device("cpu"))]
    assert s.shape == (2,) and s.dtype == np.float32 and np.all(np.abs(s) <= 1 + 1e-5)


@pytest.mark.slow  # ~25-50 s on 2 cores: writes JPEG shards, trains three tiny models
def test_gpu_bench_script_runs_on_the_cpu_and_ends_with_its_json(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHON=sys.executable, OUT_JSON=str(tmp_path / "gpu.json"))
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", "--cpu", "--cache-dir", str(tmp_path / "cache")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == json.loads((tmp_path / "gpu.json").read_text())
    assert out["bench"] == "gpu" and out["mode"] == "cpu"
    rates = out["pretrain_samples_per_s_per_gpu"]
    assert set(rates) == {"supervised", "clip", "simclr"}
    for r in rates.values():
        assert r["real_samples_per_s"] > 0 and r["memory_samples_per_s"] > 0 and r["skipped"] == 0
        assert r["ratio"] == pytest.approx(r["real_samples_per_s"] / r["memory_samples_per_s"])
        dev = r[
            "decode_device"
        ]  # the same real shards with decode=device (batched decode_jpeg in the training process)
        assert dev["real_samples_per_s"] > 0 and dev["skipped"] == 0
        assert dev["vs_cpu_decode"] == pytest.approx(dev["real_samples_per_s"] / r["real_samples_per_s"])
    assert out["finetune"]["images_per_s"] > 0 and out["features"]["images_per_s"] > 0
    assert out["shards"]["jpeg"]["params"]["n"] == out["shards"]["samples"]
