"""Check that a method's loss is the same on one worker and on several: the proof that it gathers right.

A contrastive loss draws its negatives from the whole global batch, so under DDP each worker must
see every worker's features (and gradients must flow back to the local ones). Splitting a fixed
global batch over ``world_size`` CPU processes (gloo) must then give the same loss (the mean of
the workers' losses) and the same gradients (after DDP's averaging) as one process on the whole
batch. :func:`loss_and_grads` computes both sides; a new objective can be checked with it too.

BatchNorm computes statistics per worker (SyncBatchNorm needs GPUs), so an exact check uses a
backbone without it (``test_vit``: LayerNorm only).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def fake_batch(
    pipeline: str, n: int, image_size: int, seed: int = 0, num_classes: int = 4, context_length: int = 32
) -> dict[str, torch.Tensor]:
    """A deterministic normalised batch in the shape a pipeline yields (images already float)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, image_size, image_size, generator=g)
    if pipeline == "image_label":
        return {"image": images, "label": torch.randint(0, num_classes, (n,), generator=g)}
    if pipeline == "image_text":
        text = torch.randint(1, 49000, (n, context_length), generator=g)
        text[:, -4:] = 0  # padding, as the tokenizer writes it
        return {"image": images, "text": text}
    if pipeline == "two_views":
        return {"view1": images, "view2": torch.randn(n, 3, image_size, image_size, generator=g)}
    raise ValueError(f"no fake batch for pipeline {pipeline!r}")


def _build(method: str, backbone: str, image_size: int, num_classes: int, hparams: Mapping[str, Any]):
    from pretrain.methods import METHODS

    entry = METHODS.get(method)
    torch.manual_seed(0)
    return entry, entry.build(backbone, image_size, num_classes, **entry.resolve(hparams, method))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rank_loss_and_grads(rank: int, world_size: int, args: dict[str, Any]) -> dict[str, Any]:
    """One rank's share of the check; its DDP module (which holds the process group) is freed on return."""
    import torch.distributed as dist

    from pretrain.methods import LossContext

    entry, model = _build(args["method"], args["backbone"], args["image_size"], args["num_classes"], args["hparams"])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    n = args["batch"]["__n__"] // world_size
    local = {k: v[rank * n : (rank + 1) * n] for k, v in args["batch"].items() if k != "__n__"}
    out = entry.loss(ddp, local, LossContext(rank=rank, world_size=world_size))
    out["loss"].backward()
    loss = out["loss"].detach().clone()
    dist.all_reduce(loss)
    return {"loss": loss / world_size, "grads": _grads(model)}


def _worker(rank: int, world_size: int, port: int, args: dict[str, Any], out: str) -> None:
    import gc
    import weakref

    import torch.distributed as dist

    # Before the process group exists, on purpose: imported after it (DDP's constructor imports it
    # through torch._dynamo), torch.distributed.nn.functional binds the group as the default
    # ``group`` argument of ten functions. The group then outlives destroy_process_group, and its
    # gloo threads run on into interpreter exit, whose teardown now and then aborts the process
    # (SIGABRT, "terminate called without an active exception").
    import torch.distributed.nn  # noqa: F401

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    group = weakref.ref(dist.group.WORLD)
    try:
        result = _rank_loss_and_grads(rank, world_size, args)
    finally:
        dist.destroy_process_group()
    gc.collect()
    if group() is not None:  # its threads would still be running when this process exits
        raise RuntimeError(f"rank {rank}: the process group is still referenced after destroy_process_group")
    if rank == 0:
        torch.save(result, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loss_and_grads(
    method: str,
    *,
    backbone: str = "test_vit",
    image_size: int = 32,
    global_batch: int = 16,
    world_size: int = 1,
    num_classes: int = 4,
    hparams: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and parameter gradients of ``method`` on one fixed global batch.

    ``world_size == 1`` runs in this process; more spawns that many gloo processes, each taking
    its slice of the batch, and returns the mean of their losses and rank 0's gradients after
    DDP's all-reduce (identical on every rank).
    """
    from pretrain.methods import LossContext

    if global_batch % world_size:
        raise ValueError(f"global_batch={global_batch} must divide over world_size={world_size}")
    entry, model = _build(method, backbone, image_size, num_classes, hparams or {})
    context_length = getattr(getattr(model, "clip", None), "context_length", 32)
    batch = fake_batch(entry.pipeline, global_batch, image_size, seed, num_classes, context_length)
    if world_size == 1:
        out = entry.loss(model, batch, LossContext())
        out["loss"].backward()
        return float(out["loss"].detach()), _grads(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "rank0.pt")
        args = {
            "method": method,
            "backbone": backbone,
            "image_size": image_size,
            "num_classes": num_classes,
            "hparams": dict(hparams or {}),
            "batch": {**batch, "__n__": global_batch},
        }
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            mp.spawn(_worker, args=(world_size, _free_port(), args, path), nprocs=world_size, join=True)
        finally:
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
        blob = torch.load(path, weights_only=True)
    return float(blob["loss"]), blob["grads"]
