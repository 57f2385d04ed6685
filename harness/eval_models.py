"""``tbench eval``: existing models evaluated without writing a spec.

Each model on the command line is ``[NAME=]FRAMEWORK:ARCH:WEIGHTS`` (split at the first two
colons, so ``WEIGHTS`` may itself be ``hf-hub:org/name``), for example::

    timm:resnet50.a1_in1k:hf-hub:timm/resnet50.a1_in1k
    open_clip:ViT-B-32:laion2b_s34b_b79k
    mine=open_clip:RN50:/ckpt/epoch_32.pt

:func:`eval_spec` builds the spec (``models:`` and a ``downstream:`` suite, no pre-training
grid); the command saves it next to the store (:func:`saved_spec_path`) so that ``tbench run``
on it repeats the run, then runs it like any spec: the rows land in the store with the same
skip/resume (finished jobs are not redone).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from harness.spec import FULL

MODEL_SYNTAX = "[NAME=]FRAMEWORK:ARCH:WEIGHTS"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+-]+", "-", text).strip("-") or "model"


def parse_model(text: str) -> tuple[str, dict[str, Any]]:
    """``(name, models entry)`` of one ``[NAME=]FRAMEWORK:ARCH:WEIGHTS`` argument; ValueError naming it."""
    from pretrain.existing import FRAMEWORKS, HUB_PREFIX

    name, rest = "", text
    head, sep, tail = text.partition("=")
    if sep and ":" not in head and "/" not in head:
        name, rest = head, tail
    parts = rest.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"model {text!r}: expected {MODEL_SYNTAX}, e.g. timm:resnet50:/weights/r50.safetensors "
            "or open_clip:ViT-B-32:laion2b_s34b_b79k"
        )
    framework, arch, weights = parts
    if framework not in FRAMEWORKS:
        raise ValueError(f"model {text!r}: unknown framework {framework!r}; valid: {', '.join(FRAMEWORKS)}")
    if not name:
        shown = (
            weights.removeprefix(HUB_PREFIX).replace("/", ".")
            if weights.startswith(HUB_PREFIX) or "/" not in weights
            else Path(weights).stem
        )
        name = _slug(f"{arch}@{shown}")
    return name, {"framework": framework, "arch": arch, "weights": weights}


def parse_shots(text: str) -> list[int | str]:
    """``"1,5,full"`` -> ``[1, 5, "full"]``."""
    out: list[int | str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item == FULL:
            out.append(FULL)
        elif item.isdigit():
            out.append(int(item))
        else:
            raise ValueError(f"--shots: {item!r} is not a shot count; give numbers or 'full', e.g. 1,5,full")
    if not out:
        raise ValueError("--shots: give at least one shot count, e.g. 1,5,full")
    return out


def _names(text: str, what: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise ValueError(f"--{what}: give at least one name, comma-separated")
    return names


def eval_spec(
    models: list[str],
    *,
    sets: str,
    protocols: str,
    shots: str,
    eval_seeds: str = "0",
    name: str = "eval",
    store: str | None = None,
    workdir: str | None = None,
    world_dir: str | None = None,
    world_scale: float = 1.0,
) -> dict[str, Any]:
    """The spec data of ``tbench eval`` (validate it with :func:`harness.spec.parse_spec`). Local
    paths are made absolute, so the saved spec repeats the run from any folder."""
    from pretrain.existing import weights_kind

    entries: dict[str, dict[str, Any]] = {}
    for text in models:
        model_name, entry = parse_model(text)
        if model_name in entries:
            raise ValueError(f"two models are named {model_name!r}; name them: NAME={text}")
        if weights_kind(entry["framework"], entry["weights"]) == "file":
            entry["weights"] = str(Path(entry["weights"]).expanduser().absolute())
        entries[model_name] = entry
    wanted = parse_shots(shots)
    suite = []
    for protocol in _names(protocols, "protocols"):
        if protocol == "zeroshot":
            suite.append({"name": protocol, "shots": [0]})
            continue
        given = [s for s in wanted if s != 0]
        if not given:
            raise ValueError(f"--shots: protocol {protocol!r} needs shots >= 1 or 'full' (0 is zero-shot)")
        suite.append({"name": protocol, "shots": given})
    seeds = [int(s) for s in _names(eval_seeds, "eval-seeds")]
    data: dict[str, Any] = {
        "name": name,
        "description": "written by tbench eval",
        "world": {"scale": world_scale, **({"dir": str(Path(world_dir).absolute())} if world_dir else {})},
        "models": entries,
        "downstream": {"sets": _names(sets, "sets"), "protocols": suite, "eval_seeds": seeds},
    }
    for key, value in (("store", store), ("workdir", workdir)):
        default = f"tbench-out/{name}/{key if key == 'store' else 'work'}"
        text = value if value is not None else default
        data[key] = text if "://" in text else str(Path(text).absolute())
    return data


def saved_spec_path(data: dict[str, Any]) -> Path:
    """Where the spec of a ``tbench eval`` run is saved: beside its store (a local folder), else here."""
    store = str(data["store"])
    base = Path(store).parent if "://" not in store else Path.cwd()
    return base / f"{data['name']}.yaml"


def save_spec(data: dict[str, Any], path: Path) -> Path:
    """Write the spec (YAML) for ``tbench run`` to repeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
