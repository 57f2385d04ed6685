"""CLIP pre-training with open_clip: its model configs, towers, tokenizer and contrastive loss.

The ``clip`` method (registered in :mod:`pretrain.methods`) trains an open_clip ``CLIP`` from
scratch. Which one is a setting: ``pretrain.method_args.clip.model`` names any open_clip model
config (``RN50``, ``ViT-B-32``, ... from ``open_clip.list_models()``) or one of the small configs
shipped in ``pretrain/clip_configs`` (registered with ``open_clip.add_model_config``) that train on
the embedded world on a CPU. Without a name, the backbone picks one (:data:`DEFAULT_MODELS`): the
test backbones get a same-trunk timm image tower with a 2-layer text transformer, ``resnet50`` and
``vit_b32`` get open_clip's ``RN50`` and ``ViT-B-32``.

The image tower (``clip.visual``) is the transferred encoder; its output is the CLIP image
embedding. A checkpoint also carries the rest of the model (text tower, projections, learned
temperature) and the tokenizer's name and context length, for zero-shot evaluation. Models are
built from their config dict (stored in the checkpoint), never downloaded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch import nn

from pretrain.models import CHECKPOINT_FORMAT

CONFIG_DIR = Path(__file__).with_name("clip_configs")
open_clip.add_model_config(CONFIG_DIR)

#: The open_clip model a backbone gets when ``method_args.clip.model`` is not set.
DEFAULT_MODELS = {
    "test_resnet": "tbench-test-resnet",
    "test_vit": "tbench-test-vit",
    "test_convnext": "tbench-test-convnext",
    "resnet18": "tbench-resnet18",
    "resnet50": "RN50",
    "vit_b32": "ViT-B-32",
}


def model_config(name: str, image_size: int | None = None, context_length: int | None = None) -> dict[str, Any]:
    """The open_clip config dict of ``name`` with the resolution and context length applied."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = sorted(open_clip.list_models())
        raise ValueError(
            f"unknown open_clip model {name!r}: use one of open_clip.list_models() "
            f"(e.g. RN50, ViT-B-32) or {', '.join(n for n in known if n.startswith('tbench-'))}"
        )
    cfg = copy.deepcopy(cfg)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = int(image_size)
    if context_length is not None:
        cfg["text_cfg"]["context_length"] = int(context_length)
    return cfg


def clip_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    """An untrained open_clip model from its config dict (the same constructor ``create_model`` uses)."""
    cfg = copy.deepcopy(dict(cfg))
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    cfg.pop("multimodal_cfg", None)
    return cls(**cfg)


def tokenizer_for(cfg: Mapping[str, Any]):
    """The tokenizer of a config: open_clip's BPE ``SimpleTokenizer`` (bundled with open_clip)."""
    text_cfg = cfg.get("text_cfg", {})
    if "hf_tokenizer_name" in text_cfg:
        return open_clip.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77))
    return open_clip.SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77)))


class ClipPretrainer(nn.Module):
    """An open_clip model for pre-training; ``forward(image, text)`` returns unit-norm features and the scale."""

    def __init__(self, name: str, cfg: Mapping[str, Any]):
        super().__init__()
        self.name = name
        self.cfg = dict(cfg)
        self.clip = clip_from_config(cfg)
        self.tokenizer = tokenizer_for(cfg)

    @property
    def encoder(self) -> nn.Module:
        return self.clip.visual

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = self.clip.encode_image(image, normalize=True)
        text_features = self.clip.encode_text(text, normalize=True)
        return image_features, text_features, self.clip.logit_scale.exp()

    def encoder_meta(self, backbone: str, image_size: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": "open_clip",
            "backbone": backbone,
            "clip_model": self.name,
            "clip_cfg": copy.deepcopy(self.cfg),
            "image_size": int(image_size),
            "mean": [float(x) for x in open_clip.OPENAI_DATASET_MEAN],
            "std": [float(x) for x in open_clip.OPENAI_DATASET_STD],
            "feature_dim": int(self.cfg["embed_dim"]),
            "tokenizer": "hf:" + self.cfg["text_cfg"]["hf_tokenizer_name"] if "hf_tokenizer_name" in self.cfg.get("text_cfg", {}) else "open_clip_bpe",
            "context_length": int(self.cfg["text_cfg"].get("context_length", 77)),
        }

    def export(self) -> dict[str, Any]:
        """The non-image part of the model (text tower, projections, temperature) for zero-shot."""
        return {"clip_state_dict": {k: v.detach().cpu() for k, v in self.clip.state_dict().items() if not k.startswith("visual.")}}


def build_clip_pretrainer(backbone: str, image_size: int, *, model: str | None = None,
                          context_length: int | None = None, **_: Any) -> ClipPretrainer:
    name = model or DEFAULT_MODELS.get(backbone)
    if name is None:
        raise ValueError(
            f"no default open_clip model for backbone {backbone!r}; set pretrain.method_args.clip.model "
            f"(defaults exist for {', '.join(DEFAULT_MODELS)})"
        )
    return ClipPretrainer(name, model_config(name, image_size, context_length))


def clip_loss(model: nn.Module, batch: Mapping[str, Any], ctx: Any) -> dict[str, Any]:
    """open_clip's ``ClipLoss`` with ``local_loss`` and ``gather_with_grad``.

    Each rank scores its own images and captions against every rank's (gathered with gradients),
    so the mean of the ranks' losses is the single-process loss on the global batch and DDP's
    averaged gradient is its gradient. Logged: the loss, image-to-text top-1 within the local
    batch, and the learned logit scale (1 / temperature).
    """
    image_features, text_features, scale = model(batch["image"], batch["text"])
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=ctx.rank, world_size=ctx.world_size)
    loss = loss_fn(image_features.float(), text_features.float(), scale.float())
    with torch.no_grad():
        sims = image_features.float() @ text_features.float().T
        acc = (sims.argmax(dim=-1) == torch.arange(sims.shape[0], device=sims.device)).float().mean()
    return {"loss": loss, "acc": acc, "logit_scale": scale.detach().float()}


def load_clip(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any, dict[str, Any]]:
    """The whole CLIP model of a ``clip`` checkpoint, its tokenizer and meta (for zero-shot)."""
    blob = torch.load(Path(path), map_location=map_location, weights_only=True, mmap=True)
    meta = blob["meta"]
    if meta.get("arch") != "open_clip" or "clip_state_dict" not in blob:
        raise ValueError(f"{path} is not a CLIP checkpoint (method {meta.get('method')!r})")
    model = clip_from_config(meta["clip_cfg"])
    state = {f"visual.{k}": v for k, v in blob["state_dict"].items()}
    state.update(blob["clip_state_dict"])
    model.load_state_dict(state)
    model.eval()
    return model, tokenizer_for(meta["clip_cfg"]), meta


def visual_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """An untrained CLIP image tower matching a checkpoint's meta (``load_encoder`` fills its weights)."""
    return clip_from_config(meta["clip_cfg"]).visual

