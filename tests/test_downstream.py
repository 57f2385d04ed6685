"""Unit tests of downstream/: shots, metrics, features cache, linear probe, fine-tuning, protocols.

The downstream sets are replaced by small in-memory arrays (``load_split`` and ``DOWNSTREAM`` are
monkeypatched), so nothing here depends on the embedded world being built.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from downstream import features as feat
from downstream.fewshot import sample_shots
from downstream.finetune import FinetuneConfig, augment_batch, finetune
from downstream.metrics import balanced_accuracy, chance_level, headline, top1
from downstream.probe import fit_probe
from downstream.protocols import PROTOCOLS, EvalRequest
from harness.registry import Registry
from pretrain.models import build_encoder, encoder_meta, load_encoder, save_encoder

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def world(monkeypatch):
    """A patched ``downstream.sets``: ``world.add(name, metric, {split: (images, labels)}, class_names)``."""
    try:
        sets_mod = importlib.import_module("downstream.sets")
    except ImportError:  # written by another stage; these tests only need its two names
        sets_mod = types.ModuleType("downstream.sets")
        monkeypatch.setitem(sys.modules, "downstream.sets", sets_mod)
    registry: Registry = Registry("downstream set")
    splits: dict[tuple[str, str], SimpleNamespace] = {}
    calls: list[tuple[str, str]] = []

    def load_split(name, split, data_root):
        registry.get(name)
        calls.append((name, split))
        return splits[(name, split)]

    def add(name, metric, data, class_names):
        registry.register(name, SimpleNamespace(name=name, metric=metric, description="test set", origin="test"))
        for split, (images, labels) in data.items():
            splits[(name, split)] = SimpleNamespace(images=images, labels=np.asarray(labels, dtype=np.int64),
                                                    class_names=list(class_names))

    monkeypatch.setattr(sets_mod, "DOWNSTREAM", registry, raising=False)
    monkeypatch.setattr(sets_mod, "load_split", load_split, raising=False)
    return SimpleNamespace(add=add, calls=calls)


def colour_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class c is a noisy image of colour ``palette[c]``: learnable from pixels in a few steps."""
    palette = np.array([[220, 30, 30], [30, 200, 40], [40, 50, 220], [230, 220, 40]], dtype=np.float64)
    base = palette[labels][:, None, None, :]
    noise = rng.normal(0, 25, size=(len(labels), size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def gaussian_features(n: int, centres: np.ndarray, rng: np.random.Generator, noise: float = 1.0):
    y = rng.integers(0, len(centres), n)
    return (centres[y] + noise * rng.normal(size=(n, centres.shape[1]))).astype(np.float32), y.astype(np.int64)


def write_cache(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str]) -> None:
    for split, (X, y) in splits.items():
        feat._atomic_savez(out_dir / f"{split}.npz", features=X, labels=y, class_names=np.asarray(class_names))


# --------------------------------------------------------------------------------------------- shots

def test_shot_sets_are_nested_across_k_for_a_seed():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=400)
    for seed in (0, 1, 7):
        previous = None
        for k in (1, 2, 5, 10, 20):
            idx = sample_shots(labels, k, seed)
            assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
            assert np.all(np.bincount(labels[idx], minlength=6) == k)
            if previous is not None:
                assert set(previous) <= set(idx)
            previous = idx
        assert np.array_equal(sample_shots(labels, 5, seed), sample_shots(labels, 5, seed))
    assert not np.array_equal(sample_shots(labels, 5, 0), sample_shots(labels, 5, 1))
    assert np.array_equal(sample_shots(labels, None, 3), np.arange(len(labels)))


def test_small_classes_contribute_all_examples_without_duplicates():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    idx = sample_shots(labels, 5, seed=0)
    assert len(np.unique(idx)) == len(idx)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 1]
    assert set(np.flatnonzero(labels == 1)) <= set(idx)
    # a class's draw does not depend on the other classes
    other = np.array([0] * 10 + [1] * 50)
    assert np.array_equal(sample_shots(labels, 5, 4)[:5], sample_shots(other, 5, 4)[:5])


@pytest.mark.parametrize("bad", [0, -1, "full", 2.5, True])
def test_sample_shots_rejects_bad_k(bad):
    with pytest.raises(ValueError, match="shots"):
        sample_shots(np.array([0, 1, 1]), bad, seed=0)


# --------------------------------------------------------------------------------------------- metrics

def test_balanced_accuracy_on_an_imbalanced_example():
    from sklearn.metrics import balanced_accuracy_score

    y_true = np.array([0] * 8 + [1] * 2)
    always_majority = np.zeros(10, dtype=np.int64)
    assert top1(y_true, always_majority) == pytest.approx(0.8)
    assert balanced_accuracy(y_true, always_majority) == pytest.approx(0.5)
    y_pred = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((6 / 8 + 1 / 2) / 2)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    # classes only predicted, never true, do not count
    assert balanced_accuracy(np.array([0, 0, 1]), np.array([0, 2, 1])) == pytest.approx(0.75)
    assert headline("balanced_acc", y_true, always_majority) == pytest.approx(0.5)
    assert chance_level("top1", 4) == chance_level("balanced_acc", 4) == 0.25
    with pytest.raises(ValueError, match="top1"):
        headline("accuracy", y_true, y_pred)


# --------------------------------------------------------------------------------------------- probe

def test_probe_matches_sklearn_on_a_separable_problem():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1.5, size=(5, 20))
    (Xt, yt), (Xv, yv), (Xs, ys) = (gaussian_features(n, centres, rng) for n in (300, 200, 500))
    lam = 1e-2
    probe = fit_probe(Xt, yt, Xv, yv, num_classes=5, l2_grid=[lam])
    scaler = StandardScaler().fit(Xt)
    ref = LogisticRegression(C=1.0 / (lam * len(Xt)), max_iter=2000, tol=1e-8).fit(scaler.transform(Xt), yt)
    ref_pred = ref.predict(scaler.transform(Xs))
    ours = probe.evaluate(Xs, ys)
    assert ours["top1"] == pytest.approx(np.mean(ref_pred == ys), abs=0.01)
    assert np.mean(probe.predict(Xs) == ref_pred) > 0.98
    assert np.abs(probe.weight - ref.coef_).max() < 0.05 * np.abs(ref.coef_).max()
    # the full sweep does at least as well on validation
    swept = fit_probe(Xt, yt, Xv, yv, num_classes=5)
    assert swept.val_score >= probe.val_score and swept.evaluate(Xs, ys)["top1"] > 0.9
    assert [s["l2"] for s in swept.sweep] == sorted((s["l2"] for s in swept.sweep), reverse=True)


def test_probe_ties_go_to_the_strongest_regularisation():
    rng = np.random.default_rng(2)
    centres = np.eye(3, 8) * 20.0  # far apart: every strength classifies validation perfectly
    (Xt, yt), (Xv, yv) = (gaussian_features(n, centres, rng, noise=0.5) for n in (60, 60))
    probe = fit_probe(Xt, yt, Xv, yv, num_classes=3, l2_grid=[1e-4, 1e-2, 1.0])
    assert all(s["val_score"] == 1.0 for s in probe.sweep)
    assert probe.l2 == 1.0


def test_linear_protocol_selection_never_reads_test(world, tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 0.8, size=(4, 16))
    splits = {s: gaussian_features(n, centres, rng, noise=1.0) for s, n in
              (("train", 200), ("validation", 200), ("test", 300))}
    names = ["a", "b", "c", "d"]
    world.add("toy", "balanced_acc", {}, names)
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    write_cache(clean, splits, names)
    X_test, y_test = splits["test"]
    write_cache(poisoned, {**splits, "test": (X_test, rng.permutation(y_test))}, names)

    def run(features_dir):
        req = EvalRequest(set_name="toy", data_root=tmp_path, checkpoint=tmp_path / "unused.pt",
                          features_dir=features_dir, shots=(2, 10, None), seeds=(0, 1))
        return PROTOCOLS.get("linear").run(req)

    def strip(sweep):  # everything but timings
        return [{k: v for k, v in point.items() if k != "seconds"} for point in sweep]

    a, b = run(clean), run(poisoned)
    assert [(r.shots, r.eval_seed) for r in a] == [(2, 0), (2, 1), (10, 0), (10, 1), (None, 0), (None, 1)]
    for ra, rb in zip(a, b):
        assert ra.hparams["l2"] == rb.hparams["l2"] and ra.val_score == rb.val_score
        assert strip(ra.hparams["sweep"]) == strip(rb.hparams["sweep"])
        assert ra.metric == "balanced_acc" and ra.score == ra.balanced_acc and ra.chance == 0.25
        assert ra.num_classes == 4 and np.isfinite(ra.loss)
    full_clean, full_poisoned = a[-1], b[-1]
    assert full_clean.score > 0.6 and full_poisoned.score < 0.45
    assert a[0].hparams["num_train"] == 8 and a[-1].hparams["num_train"] == 200


# --------------------------------------------------------------------------------------------- features

def test_feature_cache_round_trip(world, tmp_path):
    rng = np.random.default_rng(4)
    torch.manual_seed(0)
    encoder = build_encoder("test_resnet", 32)
    ckpt = tmp_path / "ckpt.pt"
    save_encoder(ckpt, encoder, encoder_meta(encoder, "test_resnet", 32))
    data = {s: (rng.integers(0, 256, size=(n, 24, 24, 3), dtype=np.uint8), rng.integers(0, 3, n))
            for s, n in (("train", 20), ("validation", 9), ("test", 7))}
    world.add("toy", "top1", data, ["x", "y", "z"])
    out = tmp_path / "features"
    summary = feat.extract_features(ckpt, "toy", tmp_path, out, batch_size=8, num_threads=1)
    assert summary["counts"] == {"train": 20, "validation": 9, "test": 7}
    assert summary["feature_dim"] == 96 and summary["num_classes"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz", "validation.npz"]
    loaded, meta = load_encoder(ckpt)
    for split, (images, labels) in data.items():
        X, y = feat.load_features(out, split)
        assert X.dtype == np.float32 and X.shape == (len(labels), 96)
        assert y.dtype == np.int64 and np.array_equal(y, labels)
        direct = feat.encode(loaded, feat.prepare_images(images, 32), meta, batch_size=64)
        np.testing.assert_allclose(X, direct, rtol=1e-4, atol=1e-5)
    assert feat.load_class_names(out) == ["x", "y", "z"]
    with pytest.raises(FileNotFoundError, match="extract_features"):
        feat.load_features(tmp_path / "nowhere", "train")


def test_prepare_images_resizes_and_checks_input():
    x = np.full((2, 8, 8, 3), 200, dtype=np.uint8)
    out = feat.prepare_images(x, 16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.uint8 and int(out.min()) == 200
    with pytest.raises(ValueError, match="uint8"):
        feat.prepare_images(x.astype(np.float32), 16)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        feat.prepare_images(x[..., :1], 16)


# --------------------------------------------------------------------------------------------- fine-tuning

def test_augmentation_keeps_shape_and_content():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8).to(torch.uint8)
    out = augment_batch(x, gen, pad=0)
    for i in range(2):  # without padding only flips: each image is itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    padded = augment_batch(x, gen, pad=2)
    assert padded.shape == x.shape and padded.dtype == torch.uint8


def test_finetune_learns_colour_and_is_deterministic():
    rng = np.random.default_rng(5)
    torch.manual_seed(0)
    encoder = build_encoder("test_resnet", 16)
    meta = encoder_meta(encoder, "test_resnet", 16)
    splits = []
    for n in (64, 48, 48):
        y = np.tile(np.arange(4), n // 4)
        splits.append((colour_images(y, 16, rng), y.astype(np.int64)))
    cfg = FinetuneConfig(epochs=2, lrs=(1e-3, 3e-3), batch_size=16, seed=0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    res = finetune(encoder, meta, *splits, num_classes=4, metric="top1", config=cfg, device="cpu")
    assert res.test["top1"] > 0.6 and res.val_score > 0.6  # chance is 0.25
    assert len(res.curve) == 2 and [c["epoch"] for c in res.curve] == [1, 2]
    assert all(c["lr"] == res.lr for c in res.curve) and res.lr in cfg.lrs
    assert res.curve[-1]["last_lr"] == pytest.approx(0.0, abs=1e-12)  # cosine reaches 0
    assert max(c["val_score"] for c in res.curve) == res.val_score
    assert res.curve[-1]["train_loss"] < res.curve[0]["train_loss"]
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # input untouched
    again = finetune(encoder, meta, *splits, num_classes=4, metric="top1",
                     config=FinetuneConfig(epochs=2, lrs=(res.lr,), batch_size=16, seed=0), device="cpu")
    assert [c["train_loss"] for c in again.curve] == [c["train_loss"] for c in res.curve]


def test_finetune_protocol_plumbing(world, tmp_path):
    rng = np.random.default_rng(6)
    torch.manual_seed(0)
    encoder = build_encoder("test_resnet", 16)
    ckpt = tmp_path / "ckpt.pt"
    save_encoder(ckpt, encoder, encoder_meta(encoder, "test_resnet", 16))
    data = {}
    for split, n in (("train", 24), ("validation", 12), ("test", 12)):
        y = np.tile(np.arange(3), n // 3)
        data[split] = (colour_images(y, 16, rng), y)
    world.add("colours", "top1", data, ["red", "green", "blue"])
    req = EvalRequest(set_name="colours", data_root=tmp_path, checkpoint=ckpt, features_dir=None,
                      shots=(2, None), seeds=(0,), epochs=1, lrs=(1e-3,))
    entry = PROTOCOLS.get("finetune")
    assert not entry.needs_features and PROTOCOLS.get("linear").needs_features
    results = entry.run(req)
    assert [(r.shots, r.eval_seed) for r in results] == [(2, 0), (None, 0)]
    assert results[0].hparams["num_train"] == 6 and results[1].hparams["num_train"] == 24
    for r in results:
        assert r.num_classes == 3 and r.chance == pytest.approx(1 / 3) and r.metric == "top1"
        assert r.score == r.top1 and len(r.curve) == 1 and r.train_seconds > 0
    with pytest.raises(ValueError, match="features_dir"):
        PROTOCOLS.get("linear").run(req)
