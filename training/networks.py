"""Agent-batched networks: the weights of every agent (or agent x ensemble member) are stacked on a group
axis, so one layer is one batched matmul for all agents instead of N small kernels (pitfall 5 of the
reference code). Activations are kept group-major, `[G, B, F]`, between layers."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class GroupedLinear(nn.Module):
    """`n_groups` independent linear layers applied in one `baddbmm`: `[G, B, in] -> [G, B, out]`.

    With `shared=True` one weight serves every group (parameter sharing); the group axis broadcasts.
    """

    def __init__(self, n_groups: int, in_features: int, out_features: int, shared: bool = False) -> None:
        super().__init__()
        self.n_groups, self.in_features, self.out_features, self.shared = (
            n_groups,
            in_features,
            out_features,
            shared,
        )
        stored = 1 if shared else n_groups
        self.weight = nn.Parameter(torch.empty(stored, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(stored, 1, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation, per group.
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, groups: slice | None = None) -> torch.Tensor:
        """`groups`: evaluate only these groups (`x` then holds their rows only)."""
        if self.shared:
            return torch.matmul(x, self.weight) + self.bias
        if groups is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[groups], x, self.weight[groups])

    def extra_repr(self) -> str:
        return f"groups={self.n_groups}, in={self.in_features}, out={self.out_features}, shared={self.shared}"


class GroupedLayerNorm(nn.Module):
    """LayerNorm over features with a separate affine transform per group."""

    def __init__(self, n_groups: int, features: int, shared: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        stored = 1 if shared else n_groups
        self.weight = nn.Parameter(torch.ones(stored, 1, features))
        self.bias = nn.Parameter(torch.zeros(stored, 1, features))
        self.eps = eps

    def forward(self, x: torch.Tensor, groups: slice | None = None) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if groups is not None and weight.shape[0] > 1:
            weight, bias = weight[groups], bias[groups]
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * weight + bias


class GroupedMLP(nn.Module):
    """An MLP per group, evaluated for all groups at once: `[G, B, in] -> [G, B, out]`.

    `hidden` lists the hidden widths (the reference uses 4 x 512); `layer_norm` adds LayerNorm after each
    hidden linear layer (the critics use it, as in FQL/OM2P).
    """

    def __init__(
        self,
        n_groups: int,
        in_features: int,
        hidden: tuple[int, ...] | list[int],
        out_features: int,
        activation: str = "gelu",
        layer_norm: bool = False,
        shared: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.n_groups, self.in_features, self.out_features = n_groups, in_features, out_features
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers.append(GroupedLinear(n_groups, width, size, shared))
            if layer_norm:
                layers.append(GroupedLayerNorm(n_groups, size, shared))
            layers.append(ACTIVATIONS[activation]())
            width = size
        layers.append(GroupedLinear(n_groups, width, out_features, shared))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, groups: slice | None = None) -> torch.Tensor:
        """`[G, B, in] -> [G, B, out]`; with `groups` (a slice of the group axis), only those groups:
        `x` holds their rows, and the other groups cost nothing."""
        if groups is None:
            return self.layers(x)
        for layer in self.layers:
            x = layer(x, groups) if isinstance(layer, (GroupedLinear, GroupedLayerNorm)) else layer(x)
        return x

    def flops_per_row(self) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward pass for one row of one group."""
        return sum(2 * m.in_features * m.out_features for m in self.modules() if isinstance(m, GroupedLinear))


def agent_major(x: torch.Tensor) -> torch.Tensor:
    """`[B, N, F] -> [N, B, F]` (contiguous, for the batched matmuls)."""
    return x.transpose(0, 1).contiguous()


def batch_major(x: torch.Tensor) -> torch.Tensor:
    """`[N, B, F] -> [B, N, F]`."""
    return x.transpose(0, 1)
