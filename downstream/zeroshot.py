"""Zero-shot classification with a CLIP checkpoint: class-name prompts through the text tower.

For a set with class names ``c_1 .. c_C`` and prompt templates ``t_1 .. t_T``, each class's
weight is the mean of the L2-normalised text embeddings of ``t_j.format(c_i)`` over templates,
normalised again (open_clip's :func:`build_zero_shot_classifier`, as in the CLIP paper). An
image is classified by ``logit_scale * <normalised image embedding, class weight>``, where the
image embedding is the full CLIP image tower's output (after its projection), and images are
preprocessed as the checkpoint's meta says (the same pixels every other protocol sees).

Templates follow the CLIP paper's per-dataset prompt engineering (a texture set is prompted as
textures, a satellite set as satellite photos, ...); class names have underscores replaced by
spaces. A set without its own templates gets :data:`DEFAULT_TEMPLATES`. Both are recorded in the
result's hyper-parameters, so a number can always be traced to its prompts.

The same weights can start a fine-tuning head (:class:`ClipImageFeatures` plus a linear layer
holding ``logit_scale * weights``): the fine-tuned network then starts from the zero-shot
classifier rather than from a zero head, as the core study does for CLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from downstream import accel
from downstream.features import meta_stats, normalise

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a {}.",
)

# Keyed by the set's base name (a real set "real.dtd" uses the entry "dtd").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "cifar100": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a low resolution photo of a {}.",
        "a photo of the small {}.",
        "a picture of a {}.",
    ),
    "dtd": (
        "a photo of a {} texture.",
        "a photo of a {} pattern.",
        "a photo of a {} thing.",
        "a photo of a {} object.",
        "a close-up of a {} surface.",
    ),
    "caltech101": ("a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "a centered photo of a {}."),
    "pets": ("a photo of a {}, a type of pet.", "a photo of a {}.", "a picture of a {}."),
    "domainnet_real": ("a photo of a {}.", "a picture of a {}.", "a photo of the {}."),
    "domainnet_clipart": ("clipart of a {}.", "a cartoon {}.", "a drawing of a {}.", "an illustration of a {}."),
    "eurosat": (
        "a centered satellite photo of {}.",
        "a centered satellite photo of a {}.",
        "a satellite image of {}.",
        "an aerial view of {}.",
    ),
    "cameratraps": (
        "a camera trap image of a {}.",
        "a trail camera shot of a {}.",
        "a night vision image of a {}.",
        "a photo of a {} in the wild.",
    ),
    "cassava": ("a photo of a {} cassava leaf.", "a close-up of a cassava leaf with {}.", "a photo of a leaf with {}."),
    "digits": ('a photo of the number: "{}".', "a picture of the digit {}."),
    "textures": ("a photo of {}.", "a close-up of {}.", "a photo of a {} texture."),
}


def templates_for(set_name: str) -> tuple[str, ...]:
    """The prompt templates of a set (its own, else :data:`DEFAULT_TEMPLATES`)."""
    base = set_name.split(".", 1)[1] if set_name.startswith("real.") else set_name
    return TEMPLATES.get(base, DEFAULT_TEMPLATES)


def prompt_name(class_name: str) -> str:
    """A class name as it goes into a prompt: underscores become spaces."""
    return " ".join(str(class_name).replace("_", " ").split())


@torch.inference_mode()
def class_weights(
    model: nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> torch.Tensor:
    """Normalised class embeddings ``[embed_dim, C]`` from the prompts (open_clip's builder), in
    :mod:`downstream.accel`'s ``precision`` (bf16 autocast on a GPU by default), returned in fp32."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    if not class_names:
        raise ValueError("zero-shot needs class names; the set has none")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"every zero-shot template needs one '{{}}' for the class name, got {list(templates)}")
    with accel.autocast(device, precision):
        weights = build_zero_shot_classifier(
            model,
            tokenizer,
            [prompt_name(c) for c in class_names],
            list(templates),
            num_classes_per_batch=16,
            device=device,
            use_tqdm=False,
        )
    return weights.float()


class ClipImageFeatures(nn.Module):
    """The whole CLIP image tower followed by L2 normalisation: the space the class weights live in."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x), dim=-1)


@torch.inference_mode()
def zeroshot_logits(
    model: nn.Module,
    images: torch.Tensor,
    weights: torch.Tensor,
    meta: dict[str, Any],
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> torch.Tensor:
    """``logit_scale * normalised image embeddings @ weights`` for prepared uint8 images ``[N, 3, S, S]``.

    The image tower runs in :mod:`downstream.accel`'s ``precision`` (bf16 autocast on a GPU by
    default); the product with the class weights is fp32, and the logits cross to the host once.
    """
    device = torch.device(device)
    mean, std = meta_stats(meta, device)
    model.eval()
    scale = float(model.logit_scale.detach().exp())
    images, weights = accel.pinned(images, device), weights.to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = accel.images_layout(normalise(accel.to_device(images[start : start + batch_size], device), mean, std))
        with accel.autocast(device, precision):
            emb = model.encode_image(x, normalize=True)
        out.append(scale * emb.float() @ weights)
    if not out:
        return torch.zeros((0, weights.shape[1]))
    return torch.cat(out).cpu()


def zeroshot_head(model: nn.Module, weights: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Head weights ``(W [C, embed_dim], b [C])`` reproducing the zero-shot logits on :class:`ClipImageFeatures`."""
    scale = float(model.logit_scale.detach().exp())
    W = (scale * weights.T).detach().cpu().numpy().astype(np.float32)
    return W, np.zeros(W.shape[0], dtype=np.float32)


def load_zeroshot_model(checkpoint: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The CLIP model, tokenizer and meta of ``checkpoint``; a clear error for any other method."""
    from pretrain.clip import load_clip

    try:
        return load_clip(checkpoint)
    except ValueError as exc:
        raise ValueError(f"zero-shot needs a checkpoint with a text tower (method clip): {exc}") from None
