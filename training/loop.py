"""The training loop both families share: seeded shuffles, Adam, clipping, a NaN guard, progress."""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from millrace.training.errors import DivergedTraining
from millrace.training.spec import Hyperparameters

Progress = Callable[[int, int, float], None]  # (epoch, epochs, mean loss)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def fit(parameters, rows: int, loss_of: Callable, hp: Hyperparameters, progress: Progress | None = None,
        drop_last: bool = False) -> list[float]:
    """Minimize ``loss_of(batch_rows)`` over shuffled batches; returns the mean loss per epoch.

    ``drop_last``: skip a final short batch (in-batch negatives need a full batch)."""
    import torch

    params = list({id(p): p for p in parameters if p.requires_grad}.values())  # shared tables once
    optimizer = torch.optim.Adam(params, lr=hp.learning_rate)
    rng = np.random.default_rng(hp.seed)
    history = []
    for epoch in range(1, hp.epochs + 1):
        order = rng.permutation(rows)
        stop = rows - rows % hp.batch_size if drop_last and rows >= hp.batch_size else rows
        total, steps = 0.0, 0
        for start in range(0, stop, hp.batch_size):
            batch = order[start:start + hp.batch_size]
            loss = loss_of(batch)
            if not torch.isfinite(loss):
                raise DivergedTraining(f"the loss became {loss.item()} at epoch {epoch}, step {steps + 1} "
                                       f"(fix: lower hyperparameters.learning_rate, now {hp.learning_rate:g}, or "
                                       f"check the features for extreme values; nothing was registered)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        history.append(total / max(steps, 1))
        if progress:
            progress(epoch, hp.epochs, history[-1])
    return history
