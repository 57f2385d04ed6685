"""CLIP pre-training with open_clip: its model configs, towers, tokenizer and contrastive loss.

The ``clip`` method (registered in :mod:`pretrain.methods`) trains an open_clip ``CLIP`` from
scratch. Which one is a setting: ``pretrain.method_args.clip.model`` names any open_clip model
config (``RN50``, ``ViT-B-32``, ... from ``open_clip.list_models()``) or one of the small configs
shipped in ``pretrain/clip_configs`` (registered with ``open_clip.add_model_config``) that train on
the embedded world on a CPU. Without a name, the backbone picks one (:data:`DEFAULT_MODELS`): the
test backbones and ``resnet18``/``resnet50``/``vit_b32`` get a timm image tower around that very
backbone with a text transformer (tiny for the test backbones, ``RN50``/``ViT-B-32``-sized for the
others); open_clip's own ``RN50`` or ``ViT-B-32`` can be named instead.

The transferred encoder is the image tower's timm trunk when it has one (the same network the
other methods train on that backbone; features before CLIP's projection), else open_clip's whole
image tower (its output is the CLIP image embedding). A checkpoint also carries the rest of the
model (text tower, projections, learned temperature) and the tokenizer's name and context
length, for zero-shot evaluation. Models are built from their config dict (stored in the checkpoint), never downloaded.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip.timm_model import TimmModel
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
    "resnet50": "tbench-resnet50",
    "vit_b32": "tbench-vit-b32",
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


def _timm_trunk_backbone(cfg: Mapping[str, Any]) -> str | None:
    """The registered backbone whose timm model a config's image tower wraps, if any."""
    from pretrain.models import BACKBONES

    name = cfg.get("vision_cfg", {}).get("timm_model_name")
    for backbone in BACKBONES.names():
        if name and BACKBONES.get(backbone).timm_name == name:
            return backbone
    return None


def _own_trunk(visual: nn.Module, cfg: Mapping[str, Any], image_size: int) -> nn.Module:
    """Replace a ``TimmModel`` tower's trunk by :func:`pretrain.models.build_encoder`'s (see :func:`assemble`)."""
    from pretrain.models import build_encoder

    backbone = _timm_trunk_backbone(cfg)
    if backbone is not None and isinstance(visual, TimmModel):
        trunk = build_encoder(backbone, image_size)
        if trunk.num_features != visual.trunk.num_features:
            raise ValueError(
                f"{backbone} at {image_size}px has {trunk.num_features} features, the tower expects "
                f"{visual.trunk.num_features}"
            )
        visual.trunk = trunk
    return visual


def assemble(cfg: Mapping[str, Any], image_size: int) -> nn.Module:
    """An untrained open_clip model whose timm image trunk (if any) is built like every other method's.

    open_clip's ``TimmModel`` creates its trunk without backbone-specific arguments (a ViT's
    resolution and patch size); when the tower wraps a registered backbone, the trunk is replaced
    by :func:`pretrain.models.build_encoder`'s, so the transferred encoder of a CLIP run is the
    same network as a supervised or SimCLR run's on that backbone.
    """
    model = clip_from_config(cfg)
    _own_trunk(model.visual, cfg, image_size)
    return model


def transfers_trunk(model: nn.Module) -> bool:
    """Whether the transferred encoder is the tower's timm trunk (True) or the whole open_clip tower."""
    return isinstance(model.visual, TimmModel)


class ClipPretrainer(nn.Module):
    """An open_clip model for pre-training; ``forward(image, text)`` returns unit-norm features and the scale.

    ``encoder`` (what is transferred) is the image tower's timm trunk when it has one (the
    backbone's pooled features, before CLIP's projection, as the CLIP paper probes ViTs), else
    the whole open_clip image tower (e.g. ``RN50``'s attention pool output).
    """

    def __init__(self, name: str, cfg: Mapping[str, Any], backbone: str, image_size: int):
        super().__init__()
        self.name = name
        self.cfg = dict(cfg)
        self.backbone = backbone
        self.clip = assemble(cfg, image_size)
        self.tokenizer = tokenizer_for(cfg)

    @property
    def encoder(self) -> nn.Module:
        return self.clip.visual.trunk if transfers_trunk(self.clip) else self.clip.visual

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features = self.clip.encode_image(image, normalize=True)
        text_features = self.clip.encode_text(text, normalize=True)
        return image_features, text_features, self.clip.logit_scale.exp()

    def encoder_meta(self, backbone: str, image_size: int) -> dict[str, Any]:
        from pretrain.models import encoder_meta

        text_cfg = self.cfg.get("text_cfg", {})
        clip_meta = {
            "clip_model": self.name,
            "clip_cfg": copy.deepcopy(self.cfg),
            "clip_encoder": "trunk" if transfers_trunk(self.clip) else "tower",
            "tokenizer": f"hf:{text_cfg['hf_tokenizer_name']}" if "hf_tokenizer_name" in text_cfg else "open_clip_bpe",
            "context_length": int(text_cfg.get("context_length", 77)),
            "mean": [float(x) for x in open_clip.OPENAI_DATASET_MEAN],
            "std": [float(x) for x in open_clip.OPENAI_DATASET_STD],
        }
        if transfers_trunk(self.clip):  # a plain timm encoder, loadable like any other method's
            return {**encoder_meta(self.encoder, backbone, image_size), **clip_meta}
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": "open_clip",
            "backbone": backbone,
            "image_size": int(image_size),
            "feature_dim": int(self.cfg["embed_dim"]),
            **clip_meta,
        }

    def export(self) -> dict[str, Any]:
        """The rest of the model (text tower, projections, temperature) for zero-shot evaluation."""
        prefix = "visual.trunk." if transfers_trunk(self.clip) else "visual."
        return {
            "clip_state_dict": {
                k: v.detach().cpu() for k, v in self.clip.state_dict().items() if not k.startswith(prefix)
            }
        }


def build_clip_pretrainer(
    backbone: str, image_size: int, *, model: str | None = None, context_length: int | None = None, **_: Any
) -> ClipPretrainer:
    name = model or DEFAULT_MODELS.get(backbone)
    if name is None:
        raise ValueError(
            f"no default open_clip model for backbone {backbone!r}; set pretrain.method_args.clip.model "
            f"(defaults exist for {', '.join(DEFAULT_MODELS)})"
        )
    return ClipPretrainer(name, model_config(name, image_size, context_length), backbone, image_size)


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
    if "clip_cfg" not in meta or "clip_state_dict" not in blob:
        raise ValueError(f"{path} is not a CLIP checkpoint (method {meta.get('method')!r})")
    model = (
        clip_from_config(meta["clip_cfg"])
        if meta.get("clip_build") == "open_clip"
        else assemble(meta["clip_cfg"], int(meta["image_size"]))
    )
    prefix = "visual.trunk." if meta.get("clip_encoder") == "trunk" else "visual."
    state = {f"{prefix}{k}": v for k, v in blob["state_dict"].items()}
    state.update(blob["clip_state_dict"])
    model.load_state_dict(state)
    model.eval()
    return model, tokenizer_for(meta["clip_cfg"]), meta


def visual_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """An untrained CLIP image tower matching a checkpoint's meta (``load_encoder`` fills its weights).

    Only the image tower is built (open_clip's own builder for it; open_clip is pinned): an
    evaluation loading an encoder has no use for the text tower.
    """
    from open_clip.model import _build_vision_tower

    cfg = meta["clip_cfg"]
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], bool(cfg.get("quick_gelu", False)))
    if meta.get("clip_build") == "open_clip":  # an existing model (pretrain/existing.py): open_clip's tower as built
        return visual
    return _own_trunk(visual, cfg, int(meta["image_size"]))
