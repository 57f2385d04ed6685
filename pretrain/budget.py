"""Pre-training budgets: a number of epochs, or a number of samples seen.

A budget in samples seen is DataComp's rule: every run sees the same number of samples whatever
its view's size, so a smaller view is repeated more often and the size axis measures data, not
compute. A run with ``samples_seen = N`` and global batch ``B`` takes ``ceil(N / B)`` optimizer
steps (it sees ``N`` rounded up to whole global batches). Its epochs are passes over the view of
``steps_per_epoch`` steps each (whole global batches, see :func:`pretrain.data.steps_per_epoch`),
``ceil(steps / steps_per_epoch)`` of them, the last possibly partial; the learning-rate schedule
spans the run's steps, and the run's last checkpoint is :data:`LAST` (``checkpoints/last.pt``),
whatever the number of epochs turns out to be. How many epochs that is depends on the view's
actual size, which is known only once the view is built (curation may keep fewer samples than
requested), so the planner refers to that checkpoint as :data:`LAST`, not by its epoch.

Torch-free: the spec and the planner use it too.
"""

from __future__ import annotations

import math

LAST = "last"
"""The last checkpoint of a run whose budget is in samples seen (its epoch is known only at run time)."""


def run_length(samples_seen: int, steps_per_epoch: int, batch_size: int) -> tuple[int, int]:
    """``(optimizer steps, epochs)`` of a run that sees ``samples_seen`` samples with a global batch of
    ``batch_size`` on a view of ``steps_per_epoch`` steps per pass (the last epoch may be partial)."""
    if samples_seen < 1 or steps_per_epoch < 1 or batch_size < 1:
        raise ValueError(
            f"samples_seen, steps_per_epoch and batch_size must be >= 1, got "
            f"{samples_seen}, {steps_per_epoch} and {batch_size}"
        )
    steps = math.ceil(samples_seen / batch_size)
    return steps, math.ceil(steps / steps_per_epoch)


def epochs_for_size(samples_seen: int, view_size: int, batch_size: int) -> int | None:
    """The epochs a ``samples_seen`` budget gives a view of ``view_size`` samples (None when the view
    holds less than one global batch: such a run fails with its own error). A view smaller than
    requested gives more epochs, never fewer."""
    per_epoch = view_size // batch_size  # pretrain.data.steps_per_epoch: whole global batches
    return run_length(samples_seen, per_epoch, batch_size)[1] if per_epoch >= 1 else None


def checkpoint_name(epoch: int | str) -> str:
    """The file name of a run's checkpoint of ``epoch`` (an int, or :data:`LAST`)."""
    return "last.pt" if epoch == LAST else f"epoch_{int(epoch):03d}.pt"
