"""The torch modules: one MLP over encoded feature inputs, used as a tower or as a tabular model."""
from __future__ import annotations

import torch
from torch import nn

from millrace.training.encode import InputSpec


class FeatureMLP(nn.Module):
    """Inputs in ``specs`` order: numeric float32 [B] (NaN = missing), categorical int64 [B],
    multi int64 [B, L] (0 = padding). Output [B, out_dim]; ``squash``: sigmoid on a single output."""

    def __init__(self, specs: list[InputSpec], hidden: list[int], out_dim: int, embedding_dim: int,
                 squash: bool = False, shared: dict | None = None):
        """``shared``: {input name: nn.Embedding} tables to use instead of new ones (e.g. the item
        tower's id embedding for a user's history of items)."""
        super().__init__()
        shared = shared or {}
        self.kinds = [s.kind for s in specs]
        numeric = [s for s in specs if s.kind == "numeric"]
        self.register_buffer("mean", torch.tensor([s.mean for s in numeric], dtype=torch.float32))
        self.register_buffer("std", torch.tensor([s.std for s in numeric], dtype=torch.float32))
        self.embeddings = nn.ModuleList(shared.get(s.name) or nn.Embedding(s.cardinality, embedding_dim, padding_idx=0)
                                        for s in specs if s.kind != "numeric")
        width = len(numeric) + embedding_dim * len(self.embeddings)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)
        self.squash = squash

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts, numeric, e = [], [], 0
        for kind, x in zip(self.kinds, inputs):
            if kind == "numeric":
                numeric.append(x)
                continue
            table = self.embeddings[e]
            e += 1
            if kind == "categorical":
                parts.append(table(x))
            else:  # mean of the non-padding embeddings of each row; the padding row (index 0)
                # is all zeros and never trained (padding_idx), so the sum needs no mask
                count = (x > 0).to(torch.float32).sum(dim=1, keepdim=True)
                parts.append(table(x).sum(dim=1) / count.clamp(min=1.0))
        if numeric:
            x = torch.stack(numeric, dim=1)
            x = torch.where(torch.isnan(x), self.mean.expand_as(x), x)
            parts.insert(0, (x - self.mean) / self.std)
        out = self.mlp(torch.cat(parts, dim=1))
        if self.squash:
            return torch.sigmoid(out.squeeze(-1))
        return out


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tensors(arrays, dev: torch.device) -> list[torch.Tensor]:
    return [torch.from_numpy(a if a.flags.writeable else a.copy()).to(dev) for a in arrays]
