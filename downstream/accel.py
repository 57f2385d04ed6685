"""Evaluation at accelerator speed: one place for the CUDA settings the evaluations share.

Feature extraction, fine-tuning and zero-shot run their forward passes inside
:func:`autocast` and move batches with :func:`to_device`:

- ``precision="auto"`` (the default) is bf16 autocast on a GPU and plain fp32 on a CPU;
  ``"bf16"`` asks for bf16 autocast on any device (torch runs CPU autocast in bf16); ``"fp32"``
  turns autocast off and, on a GPU, lets matmuls and convolutions use TF32
  (``torch.backends.*.allow_tf32``).
- On every device, models and images are channels-last: the layout cuDNN's and oneDNN's
  convolutions run fastest in (on one CPU thread, ``test_resnet``'s forward pass at 32 px took
  180 us an image against 280-340 contiguous; ``test_convnext`` 128 against 167-200; ``test_vit``,
  with one convolution, about the same). The sums run in another order, so CPU features differ
  from contiguous ones in the last bits.
- On a GPU, ``cudnn.benchmark`` picks kernels for the batch shapes, and host tensors are pinned
  before a ``non_blocking`` copy, so the copy overlaps the previous batch's compute.

Every CUDA-only branch tests ``device.type == "cuda"``; global backend flags are set inside the
context and restored when it exits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def amp_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (``None``: fp32, no autocast)."""
    device = torch.device(device)
    check_precision(precision)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def _cuda_flags() -> Iterator[None]:
    """TF32 matmuls/convolutions and cuDNN autotuning, restored on exit."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str = "auto") -> Iterator[None]:
    """Run the body in ``precision`` on ``device`` (see the module's docstring)."""
    device = torch.device(device)
    dtype = amp_dtype(device, precision)
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(_cuda_flags())
        if dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
        yield


def prepare_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` on ``device``, channels-last."""
    return model.to(torch.device(device)).to(memory_format=torch.channels_last)


def pinned(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` in page-locked memory when it is bound for a GPU (so its copy can be asynchronous)."""
    if torch.device(device).type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
        return x.pin_memory()
    return x


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device``: pinned and copied without blocking the host when the device is a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return pinned(x, device).to(device, non_blocking=True)
    return x.to(device)


def images_layout(x: torch.Tensor) -> torch.Tensor:
    """Float images ``[B, 3, H, W]`` in the layout convolutions prefer (channels-last, every device)."""
    return x.contiguous(memory_format=torch.channels_last)


def resident(x: torch.Tensor, device: torch.device | str, max_fraction: float = 0.25) -> torch.Tensor:
    """``x`` kept on a GPU when it takes at most ``max_fraction`` of the free memory, else pinned on the host.

    Fine-tuning indexes random batches out of its training images every step; held on the GPU
    they never cross the bus again. On a CPU ``x`` is returned as it is.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return x
    free, _ = torch.cuda.mem_get_info(device)
    if x.numel() * x.element_size() <= max_fraction * free:
        return x.to(device)
    return pinned(x, device)
