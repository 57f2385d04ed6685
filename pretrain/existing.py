"""Existing models: public checkpoints and your own, loaded through their framework's own API.

A spec's ``models:`` section declares models the harness did not pre-train (see
:class:`ExistingModel`): an open_clip model (``arch`` from ``open_clip.list_models()``, or one of
the small configs in ``pretrain/clip_configs``) or a timm model (``arch`` from
``timm.list_models()``, with or without a pretrained tag), and its ``weights``:

- an **open_clip pretrained tag** (``openai``, ``laion2b_s34b_b79k``, ...: open_clip downloads or
  finds it in its cache);
- a **local file**: a plain state dict (``.pt``/``.pth``/``.bin``), a ``.safetensors`` file, or a
  training checkpoint holding ``state_dict`` (open_clip's ``epoch_N.pt`` with ``module.``
  prefixes; timm's ``state_dict``/``model``/``state_dict_ema``): the framework's own loader reads it;
- ``hf-hub:org/name``: the weights file of a Hugging Face Hub repository, resolved through
  ``huggingface_hub`` (so ``HF_HUB_OFFLINE=1`` with a cache on disk works, and a machine with
  internet downloads as the frameworks do): ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin`` for open_clip, ``model.safetensors`` or ``pytorch_model.bin``
  for timm (whose ``config.json``'s ``pretrained_cfg``, when cached, gives the preprocessing).

:func:`import_model` loads it (``open_clip.create_model(arch, pretrained=...)``;
``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...))``, strict),
takes the preprocessing from the model's own config (open_clip's preprocess config, timm's
``resolve_model_data_config``: resolution, mean/std, interpolation, crop) and writes a harness
checkpoint (:func:`pretrain.models.save_encoder`): an open_clip model's whole image tower as the
encoder (its output is the CLIP image embedding) with the rest of the model as
``clip_state_dict``, so zero-shot works as for the harness's own CLIP runs; a timm model without
its classifier. It then reloads the checkpoint as every evaluation does and checks that the
features match the framework's model.

:func:`check_model` is the same load without writing, run before any work: an unknown
architecture (with close matches), a missing file or hub entry, and weights that do not fit the
architecture (missing/unexpected keys, shape mismatches) each raise :class:`ModelError` naming
the model. :func:`weights_identity` gives the content hash that keys the model's jobs.

Torch, timm and open_clip are imported inside the functions: the planner imports this module.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRAMEWORKS = ("open_clip", "timm")
HUB_PREFIX = "hf-hub:"
IMPORTED = "model"
"""The checkpoint "epoch" the planner gives an existing model's job (its checkpoint is ``checkpoints/model.pt``)."""
CHECKPOINT = "model.pt"
DEFAULT_METHOD = "existing"
"""The ``method`` coordinate of an existing model whose ``describes`` names none."""
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
HUB_FILES = {  # the frameworks' own names for a hub repository's weights, preferred first
    "open_clip": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    "timm": ("model.safetensors", "pytorch_model.bin"),
}


class ModelError(ValueError):
    """An existing model that cannot be used; the message names the model and what would be valid."""


@dataclass(frozen=True)
class ExistingModel:
    """One declared model (the spec's ``models.<name>``, as plain values)."""

    name: str
    framework: str
    arch: str
    weights: str
    image_size: int | None = None  # evaluate at this resolution instead of the model's own
    describes: dict[str, Any] = field(default_factory=dict)  # source, method, pretrain_size

    @classmethod
    def from_job(cls, c: dict[str, Any]) -> ExistingModel:
        """The model of a ``model`` job's config (harness.plan.model_job)."""
        return cls(c["name"], c["framework"], c["arch"], c["weights"], c.get("image_size"), dict(c["describes"]))

    def fail(self, what: str) -> ModelError:
        return ModelError(f"model {self.name!r} ({self.framework}:{self.arch}, weights {self.weights}): {what}")


def weights_kind(framework: str, weights: str) -> str:
    """``hub``, ``file`` or ``tag`` (an open_clip pretrained tag), from the text alone."""
    if weights.startswith(HUB_PREFIX):
        return "hub"
    looks_like_path = (
        os.sep in weights or "/" in weights or weights.startswith(("~", ".")) or weights.lower().endswith(FILE_SUFFIXES)
    )
    if framework == "open_clip" and not looks_like_path:
        return "tag"
    return "file"


# ------------------------------------------------------------------------------- identity


_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """The file's sha256, remembered per (path, size, mtime) for the process."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


@dataclass(frozen=True)
class Weights:
    """Where a model's weights are: a local file (with its hash) or an open_clip tag."""

    kind: str  # file | hub | tag
    path: Path | None
    sha256: str | None
    hub_config: Path | None = None  # timm: the hub repository's config.json, when present


def _hub_file(repo: str, filename: str) -> Path | None:
    """``filename`` of hub repository ``repo`` (from the cache when offline); None when the repo lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename))
    except EntryNotFoundError:
        return None
    except LocalEntryNotFoundError:  # offline (or the hub unreachable) and not in the cache
        return None


def _resolve_hub(m: ExistingModel) -> Weights:
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    repo = m.weights[len(HUB_PREFIX) :]
    names = HUB_FILES[m.framework]
    try:
        for name in names:
            path = _hub_file(repo, name)
            if path is not None:
                config = _hub_file(repo, "config.json") if m.framework == "timm" else None
                return Weights("hub", path, sha256_file(path), config)
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise m.fail(f"no Hugging Face Hub repository {repo!r} ({type(exc).__name__})") from None
    where = f"the cache {constants.HF_HUB_CACHE}" + (
        " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else " or the hub"
    )
    raise m.fail(
        f"{repo!r} has none of {', '.join(names)} in {where}; give hf-hub:org/name of a {m.framework} "
        "repository, or a local file"
    )


def locate_weights(m: ExistingModel) -> Weights:
    """Resolve ``m.weights`` (I/O: reads a local file or the hub cache to hash it); :class:`ModelError` if absent."""
    kind = weights_kind(m.framework, m.weights)
    if kind == "hub":
        return _resolve_hub(m)
    if kind == "tag":
        import open_clip

        _import_clip_configs()
        tags = open_clip.list_pretrained_tags_by_model(m.arch)
        if m.weights not in tags:
            shown = ", ".join(tags[:8]) + (f", ... ({len(tags)} in all)" if len(tags) > 8 else "")
            raise m.fail(
                f"{m.weights!r} is not an open_clip pretrained tag of {m.arch} (tags: {shown or 'none'}), "
                "nor a file; give a tag, a path (.pt, .bin, .safetensors) or hf-hub:org/name"
            )
        return Weights("tag", None, None)
    path = Path(m.weights).expanduser()
    if not path.is_file():
        raise m.fail(
            f"no weights file at {path.absolute()}; give an existing .pt/.pth/.bin/.safetensors file"
            + (", an open_clip pretrained tag" if m.framework == "open_clip" else "")
            + " or hf-hub:org/name"
        )
    return Weights("file", path.absolute(), sha256_file(path))


def weights_identity(m: ExistingModel) -> dict[str, Any]:
    """What keys the model's jobs: the weights as given, and their content hash (None for an open_clip tag)."""
    w = locate_weights(m)
    return {"weights": m.weights, "sha256": w.sha256, "path": str(w.path) if w.path else None}


# ------------------------------------------------------------------------------- architectures


def _import_clip_configs() -> None:
    import pretrain.clip  # noqa: F401  (registers the harness's small open_clip configs)


def check_arch(m: ExistingModel) -> None:
    """:class:`ModelError` unless the framework knows ``m.arch`` (naming close matches)."""
    if m.framework == "open_clip":
        import open_clip

        _import_clip_configs()
        known = open_clip.list_models()
        ok = open_clip.get_model_config(m.arch) is not None
    else:
        import timm

        known = timm.list_models()
        ok = timm.is_model(m.arch)
    if not ok:
        close = difflib.get_close_matches(m.arch, known, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"e.g. {', '.join(sorted(known)[:5])}"
        raise m.fail(f"unknown {m.framework} architecture {m.arch!r}; {hint} (all: {m.framework}.list_models())")


def _summarise_load_error(exc: BaseException) -> str:
    """A strict ``load_state_dict`` error as counts and a few names of missing/unexpected/mismatched keys."""
    text = str(exc)
    parts = []
    for label, pattern in (
        ("missing keys", r"Missing key\(s\) in state_dict: (.*?)\.\s*$"),
        ("unexpected keys", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*$"),
    ):
        found = re.search(pattern, text, flags=re.M)
        if found:
            keys = [k.strip().strip('"') for k in found.group(1).split(",")]
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    shapes = re.findall(r"size mismatch for ([^:]+):", text)
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({', '.join(shapes[:3])}{', ...' if len(shapes) > 3 else ''})")
    if parts:
        return "; ".join(parts)
    first = text.strip().splitlines()[0][:400] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if not isinstance(exc, RuntimeError) or not first else first


# ------------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """A model loaded through its framework: the encoder to transfer, its meta and what else to save."""

    encoder: Any
    meta: dict[str, Any]
    extra: dict[str, Any]


def _clip_cfg(m: ExistingModel) -> dict[str, Any]:
    """The config the model is built from (as the checkpoint stores it, so it can be rebuilt without a download)."""
    from pretrain.clip import model_config

    cfg = model_config(m.arch, image_size=m.image_size)
    cfg["vision_cfg"]["timm_model_pretrained"] = False  # the weights come from the checkpoint, never a download
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    return cfg


def _load_open_clip(m: ExistingModel, w: Weights) -> Loaded:
    import open_clip

    from pretrain.models import CHECKPOINT_FORMAT

    cfg = _clip_cfg(m)
    pretrained = m.weights if w.kind == "tag" else str(w.path)
    try:
        model = open_clip.create_model(
            m.arch, pretrained=pretrained, force_image_size=m.image_size, require_pretrained=True, weights_only=True
        )
    except RuntimeError as exc:
        raise m.fail(f"the weights do not fit the architecture: {_summarise_load_error(exc)}") from None
    model.eval()
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", cfg["vision_cfg"]["image_size"])
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    text_cfg = cfg.get("text_cfg", {})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "arch": "open_clip",
        "backbone": m.arch,
        "image_size": size,
        "mean": [float(x) for x in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)],
        "std": [float(x) for x in pp.get("std", open_clip.OPENAI_DATASET_STD)],
        "interpolation": str(pp.get("interpolation", "bicubic")),
        "resize_mode": str(pp.get("resize_mode", "shortest")),
        "feature_dim": int(cfg["embed_dim"]),
        "clip_model": m.arch,
        "clip_cfg": copy.deepcopy(cfg),
        "clip_encoder": "tower",
        "clip_build": "open_clip",
        "tokenizer": f"hf:{text_cfg['hf_tokenizer_name']}" if "hf_tokenizer_name" in text_cfg else "open_clip_bpe",
        "context_length": int(text_cfg.get("context_length", 77)),
    }
    rest = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("visual.")}
    return Loaded(model.visual, meta, {"clip_state_dict": rest})


def _timm_head_size(m: ExistingModel, w: Weights, classifier: Any) -> int:
    """How many classes the file's classifier has (0 when it has none), so the strict load can see every key."""
    from timm.models import load_state_dict

    names = [classifier] if isinstance(classifier, str) else list(classifier or ())
    state = load_state_dict(str(w.path))
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return 0


def _load_timm(m: ExistingModel, w: Weights) -> Loaded:
    import json

    import timm
    from timm.data import resolve_model_data_config

    from pretrain.models import CHECKPOINT_FORMAT

    overlay: dict[str, Any] = {}
    if w.hub_config is not None:
        overlay.update(json.loads(w.hub_config.read_text()).get("pretrained_cfg", {}))
    default = timm.models.get_pretrained_cfg(m.arch)
    classifier = overlay.get("classifier", default.classifier if default is not None else None)
    kwargs: dict[str, Any] = {}
    fixed = overlay.get("fixed_input_size", default.fixed_input_size if default is not None else False)
    if m.image_size is not None and fixed:
        kwargs["img_size"] = m.image_size  # a ViT's position embedding is resampled on load
    try:
        classes = _timm_head_size(m, w, classifier)
        overlay.update(file=str(w.path), num_classes=classes)
        model = timm.create_model(
            m.arch, pretrained=True, num_classes=classes, pretrained_cfg_overlay=overlay, **kwargs
        )
    except (RuntimeError, KeyError, ValueError) as exc:
        raise m.fail(f"the weights do not fit the architecture: {_summarise_load_error(exc)}") from None
    model.reset_classifier(0)
    model.eval()
    data = resolve_model_data_config(model)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "arch": "timm",
        "backbone": m.arch,
        "timm_model": m.arch,
        "timm_kwargs": kwargs,
        "image_size": int(m.image_size or data["input_size"][-1]),
        "mean": [float(x) for x in data["mean"]],
        "std": [float(x) for x in data["std"]],
        "interpolation": str(data.get("interpolation", "bilinear")),
        "crop_pct": float(data.get("crop_pct", 1.0)),
        "feature_dim": int(model.num_features),
    }
    return Loaded(model, meta, {})


def load_model(m: ExistingModel, w: Weights | None = None) -> Loaded:
    """Build ``m`` through its framework with its weights (strict); :class:`ModelError` on any misfit."""
    if m.framework not in FRAMEWORKS:
        raise m.fail(f"unknown framework {m.framework!r}; valid: {', '.join(FRAMEWORKS)}")
    check_arch(m)
    w = w or locate_weights(m)
    loaded = (_load_open_clip if m.framework == "open_clip" else _load_timm)(m, w)
    describes = {k: v for k, v in m.describes.items() if v is not None}
    loaded.meta.update(
        method=describes.get("method", DEFAULT_METHOD),
        model=m.name,
        framework=m.framework,
        weights=m.weights,
        weights_sha256=w.sha256,
        epoch=None,
    )
    if describes.get("pretrain_size") is not None:
        loaded.meta["view_size"] = int(describes["pretrain_size"])
    return loaded


def check_model(m: ExistingModel) -> dict[str, Any]:
    """Everything :func:`import_model` checks, without writing: arch, weights, strict load, feature width."""
    import torch

    loaded = load_model(m)
    size = int(loaded.meta["image_size"])
    with torch.inference_mode():
        out = loaded.encoder(torch.zeros(1, 3, size, size))
    if out.ndim != 2 or out.shape[1] != loaded.meta["feature_dim"]:
        raise m.fail(
            f"the encoder gives features of shape {tuple(out.shape)}, expected [N, {loaded.meta['feature_dim']}]"
        )
    return {"image_size": size, "feature_dim": loaded.meta["feature_dim"]}


def import_model(m: ExistingModel, out_path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Load ``m`` and write it as a harness checkpoint at ``out_path``; reload it as evaluations do
    and check that it gives the framework model's features. Returns a summary."""
    import torch

    from pretrain.models import load_encoder, save_encoder

    loaded = load_model(m)
    save_encoder(out_path, loaded.encoder, loaded.meta, **loaded.extra)
    size = int(loaded.meta["image_size"])
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    encoder, meta = load_encoder(out_path)
    with torch.inference_mode():
        want, got = loaded.encoder(x), encoder(x)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise m.fail(
            f"the written checkpoint {out_path} does not reproduce the framework model's features "
            f"(max difference {float((want - got).abs().max()) if want.shape == got.shape else 'shape'})"
        )
    return {
        "feature_dim": int(meta["feature_dim"]),
        "image_size": size,
        "sha256": meta.get("weights_sha256"),
        "framework": m.framework,
        "arch": m.arch,
    }
