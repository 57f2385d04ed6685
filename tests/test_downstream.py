"""Unit tests of downstream/: shots, metrics, features cache, linear probe, fine-tuning, protocols.

The downstream sets are replaced by small in-memory arrays (``load_split`` and ``DOWNSTREAM`` are
monkeypatched), so nothing here depends on the embedded world being built.
"""

from __future__ import annotations

import dataclasses
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
from harness.core.registry import Registry
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

    def resolve_set(name, custom=None):
        return name if isinstance(name, SimpleNamespace) else registry.get(name)

    def load_split(name, split, data_root, data_dir=None, image_size=None):
        name = resolve_set(name).name
        calls.append((name, split))
        return splits[(name, split)]

    def add(name, metric, data, class_names):
        registry.register(name, SimpleNamespace(name=name, metric=metric, description="test set", origin="test"))
        for split, (images, labels) in data.items():
            splits[(name, split)] = SimpleNamespace(
                images=images, labels=np.asarray(labels, dtype=np.int64), class_names=list(class_names)
            )

    monkeypatch.setattr(sets_mod, "DOWNSTREAM", registry, raising=False)
    monkeypatch.setattr(sets_mod, "load_split", load_split, raising=False)
    monkeypatch.setattr(sets_mod, "resolve_set", resolve_set, raising=False)
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
    splits = {
        s: gaussian_features(n, centres, rng, noise=1.0)
        for s, n in (("train", 200), ("validation", 200), ("test", 300))
    }
    names = ["a", "b", "c", "d"]
    world.add("toy", "balanced_acc", {}, names)
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    write_cache(clean, splits, names)
    X_test, y_test = splits["test"]
    write_cache(poisoned, {**splits, "test": (X_test, rng.permutation(y_test))}, names)

    def run(features_dir):
        req = EvalRequest(
            set_name="toy",
            data_root=tmp_path,
            checkpoint=tmp_path / "unused.pt",
            features_dir=features_dir,
            shots=(2, 10, None),
            seeds=(0, 1),
        )
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
    data = {
        s: (rng.integers(0, 256, size=(n, 24, 24, 3), dtype=np.uint8), rng.integers(0, 3, n))
        for s, n in (("train", 20), ("validation", 9), ("test", 7))
    }
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
    again = finetune(
        encoder,
        meta,
        *splits,
        num_classes=4,
        metric="top1",
        config=FinetuneConfig(epochs=2, lrs=(res.lr,), batch_size=16, seed=0),
        device="cpu",
    )
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
    req = EvalRequest(
        set_name="colours",
        data_root=tmp_path,
        checkpoint=ckpt,
        features_dir=None,
        shots=(2, None),
        seeds=(0,),
        epochs=1,
        lrs=(1e-3,),
    )
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


# -------------------------------------------------------------------------------------------- lp_ft, scratch, zero-shot


def _colour_set(world, tmp_path, name="colours", size=16, metric="top1", seed=6):
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", 36), ("validation", 18), ("test", 18)):
        y = np.tile(np.arange(3), n // 3)
        data[split] = (colour_images(y, size, rng), y)
    world.add(name, metric, data, ["red", "green", "blue"])
    return data


def _checkpoint(tmp_path, size=16):
    torch.manual_seed(0)
    encoder = build_encoder("test_resnet", size)
    ckpt = tmp_path / "ckpt.pt"
    save_encoder(ckpt, encoder, encoder_meta(encoder, "test_resnet", size))
    return ckpt


def _poison(world, name, data, rng):
    """The same set under another name, with test images and labels replaced by noise."""
    x, y = data["test"]
    bad = {**data, "test": (rng.integers(0, 256, size=x.shape, dtype=np.uint8), rng.permutation(y))}
    world.add(name, "top1", bad, ["red", "green", "blue"])


@pytest.mark.parametrize("protocol", ["finetune", "lp_ft", "scratch"])
def test_fine_tuning_protocols_never_select_on_test(world, tmp_path, protocol):
    """A poisoned test split changes the test score, never the learning rate, epoch or probe chosen."""
    data = _colour_set(world, tmp_path)
    _poison(world, "poisoned", data, np.random.default_rng(9))
    ckpt = _checkpoint(tmp_path)
    feats = None
    if PROTOCOLS.get(protocol).needs_features:
        feats = tmp_path / "feats"
        feat.extract_features(ckpt, "colours", tmp_path, feats)
        assert PROTOCOLS.get(protocol).needs_features and PROTOCOLS.get(protocol).trains

    def run(name):
        req = EvalRequest(
            set_name=name,
            data_root=tmp_path,
            checkpoint=ckpt,
            features_dir=feats,
            shots=(4,),
            seeds=(0,),
            epochs=2,
            lrs=(1e-3, 1e-2),
        )
        return PROTOCOLS.get(protocol).run(req)[0]

    clean, poisoned = run("colours"), run("poisoned")
    for k in ("lr", "epoch", "probe_l2", "init_seed"):
        assert clean.hparams.get(k) == poisoned.hparams.get(k)
    assert clean.val_score == poisoned.val_score
    assert [c["val_score"] for c in clean.curve] == [c["val_score"] for c in poisoned.curve]
    assert clean.score != poisoned.score or clean.loss != poisoned.loss
    # LP-FT's starting point (the probe, "epoch 0") is a candidate and the first point of its curve
    assert [c["epoch"] for c in clean.curve] == ([0, 1, 2] if protocol == "lp_ft" else [1, 2])
    assert all("val_top1" in c for c in clean.curve)
    if protocol == "lp_ft":
        assert clean.hparams["head_init"] == "probe" and clean.hparams["probe_l2"] > 0
        assert clean.curve[0]["val_score"] == pytest.approx(clean.hparams["probe_val_score"])
    if protocol == "scratch":
        assert clean.hparams["init"] == "random" and clean.hparams["init_seed"] == 0


def test_lp_ft_head_starts_from_the_probe(tmp_path):
    """At step 0 the LP-FT network computes exactly the probe's logits on raw features."""
    from downstream.finetune import _head
    from downstream.probe import probe_to_linear

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2.0, size=(3, 12))
    (Xt, yt), (Xv, yv) = (gaussian_features(n, centres, rng) for n in (30, 30))
    probe = fit_probe(Xt, yt, Xv, yv, num_classes=3)
    head = _head(12, 3, probe_to_linear(probe))
    with torch.no_grad():
        got = head(torch.from_numpy(Xv.astype(np.float32))).double().numpy()
    np.testing.assert_allclose(got, probe.logits(Xv), rtol=1e-4, atol=1e-4)


def test_lp_ft_never_selects_worse_than_its_probe_on_validation(world, tmp_path):
    """A learning rate that wrecks the network leaves LP-FT at its start: the probe's function,
    with the probe's validation and test scores; a sane one may move on only by beating it."""
    _colour_set(world, tmp_path)
    ckpt = _checkpoint(tmp_path)
    feats = tmp_path / "feats"
    feat.extract_features(ckpt, "colours", tmp_path, feats)
    probe_req = EvalRequest(
        set_name="colours", data_root=tmp_path, checkpoint=ckpt, features_dir=feats, shots=(None,), seeds=(0,)
    )
    probe = PROTOCOLS.get("linear").run(probe_req)[0]
    wrecked = PROTOCOLS.get("lp_ft").run(dataclasses.replace(probe_req, epochs=2, lrs=(50.0,), batch_size=4))[0]
    assert wrecked.hparams["selected_start"] and wrecked.hparams["epoch"] == 0
    assert wrecked.val_score == pytest.approx(probe.val_score)
    assert wrecked.score == pytest.approx(probe.score)
    sane = PROTOCOLS.get("lp_ft").run(dataclasses.replace(probe_req, epochs=2, lrs=(1e-3,), batch_size=4))[0]
    assert sane.val_score >= probe.val_score


def test_paired_gain_is_the_metric_difference_with_a_paired_standard_error():
    from downstream.metrics import balanced_accuracy, paired_gain, top1

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    a = rng.integers(0, 5, 400)
    b = np.where(rng.random(400) < 0.3, y, a)
    for name, fn in (("top1", top1), ("balanced_acc", balanced_accuracy)):
        gain, se = paired_gain(name, y, a, b)
        assert gain == pytest.approx(fn(y, b) - fn(y, a))
        assert 0 < se < 0.05
    # top1: the standard error of the mean of the per-example differences
    d = (b == y).astype(float) - (a == y).astype(float)
    assert paired_gain("top1", y, a, b)[1] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
    assert paired_gain("top1", y, a, a) == (0.0, 0.0)  # the same predictions: no gain, no spread


@pytest.mark.parametrize(
    "fixed, broken, alpha, keeps_start",
    [(22, 20, 0.05, True), (5, 0, 0.05, True), (40, 0, 0.05, False), (5, 0, None, False), (22, 20, None, False)],
)
def test_the_start_is_left_only_for_a_significant_gain(fixed, broken, alpha, keeps_start):
    """On 200 validation images at chance, the best of 5 fine-tuned candidates getting 22 new
    examples right and 20 the start had right wrong (+1 point), or 5 new ones right (+2.5 points,
    2.26 standard errors: short of z(1 - 0.05/5) = 2.33), does not replace the start; 40 new ones
    right does. Without the test (``start_alpha=None``) any gain does."""
    from types import SimpleNamespace

    from downstream.finetune import _versus_start, start_margin

    y = np.arange(200) % 20
    start_pred = (y + 1) % 20
    start_pred[100 : 100 + broken] = y[100 : 100 + broken]  # examples only the start gets right
    best_pred = (y + 1) % 20
    best_pred[:fixed] = y[:fixed]  # examples only fine-tuning gets right
    cfg = FinetuneConfig(lrs=(1e-3,), start_alpha=alpha)
    run = SimpleNamespace(metric="top1", val_labels=y, cfg=cfg, epochs=5)
    start = {"lr": 0.0, "epoch": 0, "val_score": broken / 200, "pred": start_pred, "state": "start"}
    best = {"lr": 1e-3, "epoch": 2, "val_score": fixed / 200, "pred": best_pred, "state": "ft", "curve": ["ft"]}
    chosen = _versus_start(run, start, best, [{"lr": 1e-3, "curve": ["first"]}])
    assert chosen["state"] == ("start" if keeps_start else "ft")
    assert chosen["curve"] == (["first"] if keeps_start else ["ft"])
    assert chosen["val_gain_over_start"] == pytest.approx((fixed - broken) / 200) and chosen["val_gain_se"] > 0
    assert start_margin(0.05, 5) == pytest.approx(2.326, abs=1e-3) and start_margin(None, 5) == 0.0


def test_min_steps_stretches_epochs_on_small_sets():
    cfg = FinetuneConfig(epochs=3, min_steps=100, batch_size=8)
    assert cfg.epochs_for(5) == 20 and cfg.epochs_for(50) == 3 and cfg.epochs_for(34) == 3
    assert FinetuneConfig(epochs=3).epochs_for(1) == 3  # min_steps 0: exactly the epochs asked
    with pytest.raises(ValueError, match="bn must be one of"):
        FinetuneConfig(bn="sometimes")


@pytest.mark.parametrize("pretrained, moves", [(True, False), (False, True)])
def test_batchnorm_statistics_frozen_from_pretrained_weights_only(pretrained, moves):
    """bn="auto": running statistics of a pre-trained encoder survive fine-tuning (affine weights
    still train); from random initialisation BatchNorm learns them from batches."""
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    encoder = build_encoder("test_resnet", 16)
    meta = encoder_meta(encoder, "test_resnet", 16)
    y = np.tile(np.arange(2), 8)
    splits = [(colour_images(y, 16, rng), y.astype(np.int64)) for _ in range(3)]
    res = finetune(
        encoder,
        meta,
        *splits,
        num_classes=2,
        config=FinetuneConfig(epochs=1, lrs=(1e-2,), batch_size=4, min_steps=6),
        device="cpu",
        pretrained=pretrained,
    )
    assert res.hparams["bn"] == ("frozen" if pretrained else "train")
    assert res.hparams["epochs"] == 2 and res.hparams["total_steps"] == 8  # 4 steps an epoch, stretched to >= 6
    bn_before = {k: v for k, v in encoder.state_dict().items() if "running_mean" in k}
    assert bn_before
    # the selected weights are not returned; retrain one lr and compare the encoder's statistics
    from downstream import finetune as ft_mod

    captured = {}
    real = ft_mod._snapshot

    def spy(model):
        state = real(model)
        captured.update({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("0.")})
        return state

    ft_mod._snapshot = spy
    try:
        finetune(
            encoder,
            meta,
            *splits,
            num_classes=2,
            config=FinetuneConfig(epochs=1, lrs=(1e-2,), batch_size=4),
            device="cpu",
            pretrained=pretrained,
        )
    finally:
        ft_mod._snapshot = real
    changed = any(not torch.equal(captured[k], v) for k, v in bn_before.items())
    assert changed == moves


def test_scratch_is_seeded_by_the_eval_seed(world, tmp_path):
    _colour_set(world, tmp_path)
    ckpt = _checkpoint(tmp_path)
    req = EvalRequest(
        set_name="colours",
        data_root=tmp_path,
        checkpoint=ckpt,
        features_dir=None,
        shots=(2,),
        seeds=(0, 1, 0),
        epochs=2,
        lrs=(1e-2,),
    )
    a, b, c = PROTOCOLS.get("scratch").run(req)
    assert (a.hparams["init_seed"], b.hparams["init_seed"]) == (0, 1)
    # the first epoch's loss is ln(3) for any encoder (the head starts at zero); the second is not
    assert a.curve[0]["train_loss"] == pytest.approx(np.log(3))
    assert a.curve[1]["train_loss"] == c.curve[1]["train_loss"] != b.curve[1]["train_loss"]
    assert PROTOCOLS.get("scratch").from_scratch


def _clip_checkpoint(path: Path, size: int = 32) -> Path:
    from pretrain.methods import METHODS

    method = METHODS.get("clip")
    torch.manual_seed(0)
    model = method.build("test_resnet", size, 0, **method.resolve({}))
    meta = {**method.meta(model, "test_resnet", size), "epoch": 0, "samples_seen": 0}
    save_encoder(path, model.encoder, meta, **method.export(model))
    return path


def test_zeroshot_scores_prompts_through_the_text_tower(world, tmp_path):
    from downstream.zeroshot import (
        ClipImageFeatures,
        class_weights,
        load_zeroshot_model,
        templates_for,
        zeroshot_head,
        zeroshot_logits,
    )

    data = _colour_set(world, tmp_path, size=32)
    ckpt = _clip_checkpoint(tmp_path / "clip.pt")
    req = EvalRequest(
        set_name="colours", data_root=tmp_path, checkpoint=ckpt, features_dir=None, shots=(0,), seeds=(0,)
    )
    (r,) = PROTOCOLS.get("zeroshot").run(req)
    assert r.shots == 0 and r.num_classes == 3 and r.chance == pytest.approx(1 / 3)
    assert r.hparams["templates"] == list(templates_for("colours")) and r.hparams["class_prompts"] == [
        "red",
        "green",
        "blue",
    ]
    # The score is what the text tower's class weights give, computed by hand.
    model, tok, meta = load_zeroshot_model(ckpt)
    w = class_weights(model, tok, ["red", "green", "blue"], templates_for("colours"))
    x = feat.prepare_images(data["test"][0], 32)
    logits = zeroshot_logits(model, x, w, meta)
    assert r.top1 == pytest.approx(float((logits.argmax(1).numpy() == data["test"][1]).mean()))
    # A fine-tuning head started from zero-shot weights reproduces those logits before any step.
    W, b = zeroshot_head(model, w)
    mean, std = feat.meta_stats(meta)
    with torch.no_grad():
        net = torch.nn.Sequential(ClipImageFeatures(model.visual).eval(), torch.nn.Linear(W.shape[1], 3))
        net[1].weight.copy_(torch.from_numpy(W)), net[1].bias.copy_(torch.from_numpy(b))
        torch.testing.assert_close(net(feat.normalise(x, mean, std)), logits, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="shots 0"):
        PROTOCOLS.get("zeroshot").run(
            EvalRequest(
                set_name="colours", data_root=tmp_path, checkpoint=ckpt, features_dir=None, shots=(1,), seeds=(0,)
            )
        )
    with pytest.raises(ValueError, match="text tower"):
        PROTOCOLS.get("zeroshot").run(
            EvalRequest(
                set_name="colours",
                data_root=tmp_path,
                checkpoint=_checkpoint(tmp_path, 32),
                features_dir=None,
                shots=(0,),
                seeds=(0,),
            )
        )
    ft = PROTOCOLS.get("finetune").run(
        EvalRequest(
            set_name="colours",
            data_root=tmp_path,
            checkpoint=ckpt,
            features_dir=None,
            shots=(2,),
            seeds=(0,),
            epochs=1,
            lrs=(1e-4,),
            head_init="zeroshot",
        )
    )[0]
    assert ft.hparams["head_init"] == "zeroshot" and ft.hparams["templates"] == list(templates_for("colours"))


def test_balanced_sets_weight_classes_equally_in_fine_tuning():
    from downstream.finetune import loss_weights

    w = loss_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert w.tolist() == pytest.approx([4 / 6, 2.0, 0.0])
    assert loss_weights(np.array([0, 1]), 2, None) is None
    with pytest.raises(ValueError, match="balanced"):
        loss_weights(np.array([0, 1]), 2, "inverse")


# --------------------------------------------------------------------------------------------- spectra


def test_spectra_k80_and_effective_rank():
    from downstream.spectra import effective_rank, k_mass, spectrum, summarise

    assert k_mass([4.0, 3.0, 2.0, 1.0]) == 3  # 4+3 = 70% < 80% <= 4+3+2 = 90%
    assert k_mass([1.0, 1.0, 1.0, 1.0, 1.0]) == 4
    assert k_mass([5.0, 0.0]) == 1 and k_mass([0.0, 0.0]) == 0
    assert effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0)
    assert effective_rank([2.0, 0.0, 0.0]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(50, 6)))
    V, _ = np.linalg.qr(rng.normal(size=(10, 6)))
    s_true = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])
    X = (U * s_true) @ V.T
    np.testing.assert_allclose(spectrum(X)[:6], s_true, atol=1e-9)
    out = summarise(X)
    assert out["k80"] == 2 and len(out["singular_values"]) == 10 and out["dim"] == 10
    with pytest.raises(ValueError, match="NaN"):
        spectrum(np.array([[np.nan, 1.0]]))
    # Centring removes the mean's direction: a constant offset adds one large singular value.
    shifted = X + 100.0
    assert spectrum(shifted)[0] > 100 * spectrum(shifted, center=True)[0] / 10
