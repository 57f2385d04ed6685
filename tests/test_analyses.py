"""The related studies' analyses over the store: convergence views, spectra rows."""

from __future__ import annotations

import pytest

from results.store import Store


def _run(key, protocol, method, shots=5, seed=0, backbone="test_resnet", status="ok"):
    return {
        "key": key,
        "status": status,
        "protocol": protocol,
        "method": method,
        "source": "x",
        "backbone": backbone,
        "pretrain_key": f"p-{method}",
        "checkpoint_epoch": 3,
        "downstream": "dtd",
        "shots": shots,
        "eval_seed": seed,
        "metric": "top1",
        "score": 0.5,
    }


def _curve(key, protocol, vals, losses, shots=5, seed=0):
    return [
        {
            "key": key,
            "job_key": f"j-{key}",
            "protocol": protocol,
            "downstream": "dtd",
            "shots": shots,
            "eval_seed": seed,
            "epoch": i + 1,
            "val_score": v,
            "train_loss": loss,
            "lr": 1e-3,
        }
        for i, (v, loss) in enumerate(zip(vals, losses))
    ]


def test_convergence_views(tmp_path):
    st = Store(tmp_path / "store")
    st.write_part(
        "runs",
        "a",
        [
            _run("ft", "finetune", "supervised"),
            _run("sc", "scratch", "none"),
            _run("ft_other_seed", "finetune", "supervised", seed=1),
            _run("ft_failed", "finetune", "clip", status="failed"),
        ],
    )
    st.write_part(
        "curves",
        "a",
        _curve("ft", "finetune", [0.6, 0.78, 0.8], [1.0, 0.5, 0.4])
        + _curve("sc", "scratch", [0.2, 0.4, 0.5], [2.0, 1.0, 0.8])
        + _curve("ft_other_seed", "finetune", [0.5, 0.6, 0.7], [1.0, 0.9, 0.8], seed=1)
        + _curve("ft_failed", "finetune", [0.1], [3.0]),
    )
    conv = st.query("SELECT * FROM convergence ORDER BY key").set_index("key")
    assert set(conv.index) == {"ft", "sc", "ft_other_seed"}  # failed runs are left out
    # 95% of 0.8 is 0.76: reached at epoch 2; scratch's 95% of 0.5 (0.475) only at epoch 3
    assert conv.loc["ft", "epochs_to_95"] == 2 and conv.loc["sc", "epochs_to_95"] == 3
    assert conv.loc["ft", "final_val_score"] == 0.8 and conv.loc["ft", "epochs"] == 3
    assert conv.loc["ft", "final_train_loss"] == 0.4
    gaps = st.query("SELECT * FROM convergence_gaps ORDER BY key, epoch")
    assert list(gaps["key"]) == ["ft"] * 3  # the seed-1 run has no scratch partner
    assert list(gaps["rel_acc_gap"]) == pytest.approx([2.0, 0.95, 0.6])
    assert list(gaps["rel_loss_gap"]) == pytest.approx([-0.5, -0.5, -0.5])
    assert set(gaps["scratch_key"]) == {"sc"}


def test_convergence_views_exist_on_an_empty_store(tmp_path):
    st = Store(tmp_path / "empty")
    assert len(st.query("SELECT * FROM convergence")) == 0
    assert "rel_acc_gap" in st.query("SELECT * FROM convergence_gaps").columns
