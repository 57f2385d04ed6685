"""The three pre-training methods as real methods: they learn on the embedded world, they gather
correctly across workers, their checkpoints carry what evaluations need, and a killed run resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from curation.views import ViewConfig, build_view
from pretrain.loop import DistInfo, TrainConfig, checkpoint_path, state_path, train_loop
from pretrain.methods import METHODS, LossContext, nt_xent
from pretrain.models import load_encoder
from pretrain.parity import fake_batch, loss_and_grads

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def views(world, tmp_path_factory) -> dict[str, Path]:
    """A labelled view of `imagenet` and an image-text view of `laion`, 256 samples each."""
    out = {}
    for name, source, labels in (("labelled", "imagenet", True), ("image_text", "laion", False)):
        d = tmp_path_factory.mktemp(name)
        build_view(
            ViewConfig(
                source=source,
                mixture=None,
                curation_name="none",
                curation=(),
                size=256,
                label_noise=0.0,
                needs_labels=labels,
                seed=0,
            ),
            world,
            d,
        )
        out[name] = d
    return out


def cfg_for(method: str, **kw) -> TrainConfig:
    base = dict(
        method=method,
        backbone="test_resnet",
        image_size=32,
        epochs=3,
        save_epochs=(3,),
        batch_size=32,
        lr=2e-3,
        weight_decay=0.05,
        warmup_epochs=0.5,
        seed=0,
        num_classes=30 if METHODS.get(method).needs_labels else 0,
    )
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("method", ["supervised", "clip", "simclr"])
def test_loss_falls_on_the_embedded_world(method, views, tmp_path):
    view = views["labelled" if METHODS.get(method).needs_labels else "image_text"]
    seen: list[dict] = []
    summary = train_loop(cfg_for(method), view, tmp_path, DistInfo(), seen.append)
    losses = [r["loss"] for r in seen]
    assert len(losses) == 3 and all(map(lambda x: x == x, losses))
    assert losses[-1] < losses[0] - 0.05, losses  # a real drop, not noise
    assert summary["skipped"] == 0 and summary["samples_seen"] == 3 * 8 * 32


# --------------------------------------------------------------------------- distributed correctness


@pytest.mark.parametrize("method", ["clip", "simclr", "supervised"])
def test_two_workers_equal_one_worker_on_the_same_global_batch(method):
    """The proof that gathering is right: same loss and same gradients for 1 and 2 gloo workers."""
    one_loss, one_grads = loss_and_grads(method, world_size=1, global_batch=16)
    two_loss, two_grads = loss_and_grads(method, world_size=2, global_batch=16)
    assert two_loss == pytest.approx(one_loss, rel=1e-6, abs=1e-6)
    assert one_grads.keys() == two_grads.keys() and len(one_grads) > 10
    for name, g in one_grads.items():
        torch.testing.assert_close(two_grads[name], g, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_without_gathering_the_loss_would_differ():
    """The check above can fail: contrastive losses on each half alone (no gather) average to another value."""
    torch.manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    z2 = torch.nn.functional.normalize(z1 + 0.3 * torch.randn(16, 8), dim=-1)
    full, _ = nt_xent(z1, z2, 0.5)
    halves = [nt_xent(z1[i : i + 8], z2[i : i + 8], 0.5)[0] for i in (0, 8)]
    assert abs(float(sum(halves) / 2) - float(full)) > 1e-2


def test_simclr_loss_is_the_textbook_nt_xent():
    """NT-Xent against a direct transcription of the SimCLR paper's formula."""
    torch.manual_seed(1)
    z1 = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    z2 = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    t = 0.3
    z = torch.cat([z1, z2])
    sim = z @ z.T / t
    n = 6
    terms = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = torch.logsumexp(torch.cat([sim[i, :i], sim[i, i + 1 :]]), dim=0)
        terms.append(denom - sim[i, j])
    ours, _ = nt_xent(z1, z2, t, LossContext())
    assert float(ours) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


# --------------------------------------------------------------------------- checkpoints


def test_clip_checkpoint_carries_the_encoder_text_tower_and_tokenizer(views, tmp_path):
    from pretrain.clip import load_clip

    cfg = cfg_for("clip", epochs=1, save_epochs=(0, 1))
    train_loop(cfg, views["image_text"], tmp_path)
    ckpt = checkpoint_path(tmp_path, 1)
    encoder, meta = load_encoder(ckpt)
    # The transferred encoder is the tower's timm trunk: the same network a supervised run trains.
    assert meta["arch"] == "timm" and meta["clip_encoder"] == "trunk" and meta["clip_model"] == "tbench-test-resnet"
    assert meta["tokenizer"] == "open_clip_bpe" and meta["context_length"] == 32 and meta["feature_dim"] == 96
    assert type(encoder).__name__ == "ResNet" and meta["mean"] != [0.485, 0.456, 0.406]  # CLIP's normalisation
    model, tokenizer, meta2 = load_clip(ckpt)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), model.visual.trunk(x))
        assert model.encode_image(x).shape == (3, 64)
        text = model.encode_text(tokenizer(["a photo of a dog", "a cat", "a bird"]), normalize=True)
    assert text.shape == (3, 64)
    blob = torch.load(ckpt, weights_only=True)  # the whole training state rides along
    assert blob["train"]["epoch"] == 1 and {"model", "optimizer", "scheduler", "scaler", "data", "rng"} <= set(
        blob["train"]
    )
    assert blob["train"]["data"]["epochs_done"] == 1
    assert float(blob["clip_state_dict"]["logit_scale"]) <= torch.log(torch.tensor(100.0))


def test_method_settings_are_validated_and_recorded(views, tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        cfg_for("simclr", hparams={"temprature": 0.1})
    with pytest.raises(ValueError, match="unknown open_clip model"):
        train_loop(cfg_for("clip", hparams={"model": "ViT-Q-99"}), views["image_text"], tmp_path / "x")
    cfg = cfg_for("simclr", epochs=1, save_epochs=(1,), hparams={"temperature": 0.2, "proj_dim": 32})
    train_loop(cfg, views["image_text"], tmp_path / "s")
    _, meta = load_encoder(checkpoint_path(tmp_path / "s", 1))
    assert meta["hparams"]["temperature"] == 0.2 and meta["hparams"]["proj_dim"] == 32 and meta["method"] == "simclr"


# --------------------------------------------------------------------------- a killed run resumes


_TRAIN = """
import json, sys
from pretrain.loop import TrainConfig, train_loop
cfg = TrainConfig(**json.loads(sys.argv[1]))
print(json.dumps(train_loop(cfg, sys.argv[2], sys.argv[3])))
"""


def _train_process(cfg: dict, view: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", _TRAIN, json.dumps(cfg), str(view), str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch(views, tmp_path):
    """SIGKILL a training process after its first epoch; the restart trains only what was missing
    and ends exactly where an uninterrupted run ends."""
    cfg = dict(
        method="clip",
        backbone="test_resnet",
        image_size=32,
        epochs=4,
        save_epochs=[2, 4],
        batch_size=32,
        lr=2e-3,
        seed=0,
    )
    view = views["image_text"]
    full = _train_process(cfg, view, tmp_path / "full")
    cut = _train_process(cfg, view, tmp_path / "cut")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and cut.poll() is None:
        if state_path(tmp_path / "cut").is_file():
            break
        time.sleep(0.02)
    assert cut.poll() is None, cut.communicate()
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    killed_at = torch.load(state_path(tmp_path / "cut"), weights_only=True)["epoch"]
    assert 1 <= killed_at < 4

    again = _train_process(cfg, view, tmp_path / "cut")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["resumed_from"] == killed_at and summary["epochs_trained"] == 4 - killed_at
    out_full, err_full = full.communicate(timeout=300)
    assert full.returncode == 0, err_full
    for epoch in (4,):
        a = torch.load(checkpoint_path(tmp_path / "full", epoch), weights_only=True)
        b = torch.load(checkpoint_path(tmp_path / "cut", epoch), weights_only=True)
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
        for k in a["clip_state_dict"]:
            assert torch.equal(a["clip_state_dict"][k], b["clip_state_dict"][k]), k

    def losses(p):
        return [r["loss"] for r in json.loads((p / "metrics.json").read_text())["epochs"]]

    assert losses(tmp_path / "full") == losses(tmp_path / "cut")


def test_fake_batches_match_the_pipelines():
    for name in ("image_label", "image_text", "two_views"):
        batch = fake_batch(name, 4, 32)
        assert all(v.shape[0] == 4 for v in batch.values())


@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_waits_instead_of_racing(views, tmp_path):
    """A killed driver's Ray instance may still be finishing a run when the job is started again:
    the second trainer waits for the first's lock, then finds the run finished (or resumes it)."""
    cfg = dict(
        method="simclr",
        backbone="test_resnet",
        image_size=32,
        epochs=15,
        save_epochs=[15],
        batch_size=32,
        lr=2e-3,
        seed=0,
    )  # long enough to outlast the second process's start-up
    out = tmp_path / "run"
    first = _train_process(cfg, views["image_text"], out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not state_path(out).is_file() and first.poll() is None:
        time.sleep(0.02)
    second = _train_process(cfg, views["image_text"], out)
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    one, two = (json.loads(o.strip().splitlines()[-1]) for o in (out1, out2))
    assert one["epochs_trained"] == 15 and two["epochs_trained"] == 0 and two["resumed_from"] == 15
    assert "waiting for it to finish" in err2
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())["epochs"]] == list(range(1, 16))
