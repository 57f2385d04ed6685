"""The quickstart's quality targets, read from a results store (issue: numbers a researcher would sign).

Not a speed benchmark: each check compares measured scores with what a sound protocol must give
on the embedded world, and prints what it found, so a store from any machine can be checked:

- ``beats_floor``: for every pre-trained configuration at its largest size (final checkpoint),
  the mean 10-shot linear score beats the random-init floor on at least 7 of the 9 world sets;
- ``lp_ft_vs_linear``: on every (checkpoint, set), LP-FT at full data is at least the linear
  probe's full-data score minus 1 point (per pre-training seed: the same checkpoint);
- ``dtd_above_chance``: on dtd at full data, ``finetune`` is at least 10 points and ``scratch``
  at least 5 points above chance (every row);
- ``shots_monotone``: linear accuracy over shots never steps down by more than two standard
  errors (over eval seeds) for any (checkpoint, set);
- ``pretrain_seeds``: every pre-trained configuration has at least two pre-training seeds.

    .venv/bin/python bench/quickstart_targets.py --store tbench-out/quickstart/store

The last line is one JSON object with every check's verdict and figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.catalogue import WORLD_SETS  # noqa: E402
from results.plotting import final_checkpoints  # noqa: E402
from results.store import load  # noqa: E402

CONFIG = ["source", "curation", "label_noise", "method", "backbone"]


def beats_floor(runs: pd.DataFrame) -> dict:
    lin = runs[(runs["protocol"] == "linear") & (runs["shots"] == 10) & runs["downstream"].isin(WORLD_SETS)]
    floor = lin[lin["method"] == "none"].groupby("downstream")["score"].mean()
    pre = final_checkpoints(lin[lin["method"] != "none"])
    largest = pre.groupby(CONFIG, dropna=False)["pretrain_size"].transform("max")
    pre = pre[pre["pretrain_size"] == largest]
    out = []
    for cfg, rows in pre.groupby(CONFIG + ["pretrain_size"], dropna=False):
        mean = rows.groupby("downstream")["score"].mean()
        wins = int(sum(mean[s] > floor[s] for s in mean.index if s in floor.index))
        out.append(
            {
                "config": " ".join(str(v) for v in cfg),
                "sets_beaten": wins,
                "sets": int(len(mean)),
                "mean_gain": round(100 * float((mean - floor.reindex(mean.index)).mean()), 2),
            }
        )
    return {"ok": bool(out) and all(o["sets_beaten"] >= 7 for o in out), "configs": out}


def lp_ft_vs_linear(runs: pd.DataFrame) -> dict:
    full = runs[runs["shots"].isna()]
    key = ["pretrain_key", "checkpoint_epoch", "downstream"]
    lin = full[full["protocol"] == "linear"].groupby(key)["score"].mean()
    lpft = full[full["protocol"] == "lp_ft"].groupby(key)["score"].mean()
    both = pd.concat({"linear": lin, "lp_ft": lpft}, axis=1).dropna()
    if both.empty:
        return {"ok": False, "why": "no (checkpoint, set) with both linear and lp_ft at full data"}
    worst = float(100 * (both["lp_ft"] - both["linear"]).min())
    return {
        "ok": worst >= -1.0,
        "pairs": int(len(both)),
        "worst_lp_ft_minus_linear": round(worst, 2),
        "mean_lp_ft_minus_linear": round(float(100 * (both["lp_ft"] - both["linear"]).mean()), 2),
    }


def dtd_above_chance(runs: pd.DataFrame) -> dict:
    dtd = runs[(runs["downstream"] == "dtd") & runs["shots"].isna()]
    out = {}
    for proto, margin in (("finetune", 0.10), ("scratch", 0.05)):
        rows = dtd[dtd["protocol"] == proto]
        if rows.empty:
            out[proto] = {"ok": False, "why": "no rows"}
            continue
        above = 100 * (rows["score"] - rows["chance"])
        out[proto] = {
            "ok": bool((above >= 100 * margin).all()),
            "min_points_above_chance": round(float(above.min()), 1),
            "rows": int(len(rows)),
        }
    return {"ok": all(v["ok"] for v in out.values()), **out}


def shots_monotone(runs: pd.DataFrame) -> dict:
    """Each failing step also gives its curve's full-data score above chance (points): a curve at
    chance is flat, so its steps are noise, and with three eval seeds a 2-SE rule flags some of them."""
    lin = runs[(runs["protocol"] == "linear") & runs["shots"].notna()]
    full = runs[(runs["protocol"] == "linear") & runs["shots"].isna()]
    above = (full["score"] - full["chance"]).groupby(
        [full["pretrain_key"], full["checkpoint_epoch"], full["downstream"]]
    )
    above = above.mean()
    worst, bad, curves = math.inf, [], 0
    for (pkey, epoch, ds), rows in lin.groupby(["pretrain_key", "checkpoint_epoch", "downstream"]):
        curves += 1
        by = rows.groupby("shots")["score"]
        mean, se = by.mean(), by.std(ddof=1) / np.sqrt(by.count())
        shots = sorted(mean.index)
        for a, b in zip(shots, shots[1:]):
            drop = mean[a] - mean[b]
            allowed = 2 * math.sqrt(float(se[a]) ** 2 + float(se[b]) ** 2) if by.count()[a] > 1 else 0.0
            worst = min(worst, allowed - drop)
            if drop > allowed:
                bad.append(
                    {
                        "pretrain_key": pkey,
                        "epoch": int(epoch),
                        "set": ds,
                        "shots": [int(a), int(b)],
                        "drop": round(100 * float(drop), 2),
                        "allowed": round(100 * allowed, 2),
                        "full_data_above_chance": round(100 * float(above.get((pkey, epoch, ds), math.nan)), 1),
                    }
                )
    off_chance = [b for b in bad if not b["full_data_above_chance"] <= 5.0]
    return {
        "ok": not bad,
        "steps_down_beyond_2se": bad[:10],
        "count": len(bad),
        "curves": curves,
        "count_on_curves_more_than_5_points_above_chance": len(off_chance),
    }


def pretrain_seeds(runs: pd.DataFrame) -> dict:
    pre = runs[runs["method"] != "none"]
    n = pre.groupby(CONFIG + ["pretrain_size"], dropna=False)["pretrain_seed"].nunique()
    return {
        "ok": bool(len(n)) and int(n.min()) >= 2,
        "configs": int(len(n)),
        "min_seeds": int(n.min()) if len(n) else 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="tbench-out/quickstart/store")
    args = ap.parse_args(argv)
    runs = load(args.store)["runs"]
    runs = runs[runs["status"] == "ok"]
    checks = {
        "beats_floor": beats_floor(runs),
        "lp_ft_vs_linear": lp_ft_vs_linear(runs),
        "dtd_above_chance": dtd_above_chance(runs),
        "shots_monotone": shots_monotone(runs),
        "pretrain_seeds": pretrain_seeds(runs),
    }
    for name, res in checks.items():
        print(f"{name}: {'ok' if res['ok'] else 'FAILED'}  {json.dumps({k: v for k, v in res.items() if k != 'ok'})}")
    print(
        json.dumps(
            {
                "bench": "quickstart_targets",
                "store": str(args.store),
                "passed": sum(r["ok"] for r in checks.values()),
                "checks": len(checks),
                **{k: v["ok"] for k, v in checks.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
