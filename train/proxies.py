"""Zero-cost proxies: a guess at how well an untrained net will train, from one forward/backward pass.

Each proxy is a function `proxy(model, x, y, seed=0) -> float` of an nn.Module and one batch (x: normalised
images N x 3 x H x W, y: their labels), higher = more promising. It works on a deep copy of the model on
x's device (the caller's weights, buffers and train/eval mode are never touched), seeds torch's RNG inside
a fork (the caller's RNG stream is left as it was), and costs one forward and at most one backward pass.

    synflow    data-free: sum |w * dR/dw| over conv/linear weights, R = the output summed for an all-ones
               input through the net with every weight replaced by its absolute value (Tanaka et al. 2020)
    jacov      input-Jacobian correlation across the batch: nets that tell images apart score high
               (Mellor et al. 2020, v1)
    naswot     log-determinant of the Hamming kernel of the ReLU on/off codes of the batch (Mellor et al.
               2021, "NAS without training")
    grad_norm  sum over conv/linear weights of the L2 norm of the cross-entropy gradient
    params     the number of trainable parameters: the baseline every proxy must beat to be worth it

`rank_vote` combines several proxies by their ranks among the candidates (a Borda count), so proxies of
wildly different scales weigh the same. A proxy never removes a candidate: a value that is not finite
(a NaN, a singular kernel's -inf, an overflow) ranks last, and the candidate stays in the list.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import normalize_batch
from .data import ImageData

__all__ = ["Proxy", "PROXIES", "VOTE", "synflow", "jacov", "naswot", "grad_norm", "params", "get_proxy", "score",
           "ranks", "rank_vote", "proxy_batch"]

Proxy = Callable[..., float]  # (model, x, y, seed=0) -> float, higher = more promising

JACOV_K = 1e-5  # jacov's regulariser of the correlation eigenvalues (the paper's value)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's RNG seeded inside, restored after: a proxy's result depends on the seed, not on the caller."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.enable_grad():  # the caller may be inside torch.no_grad()
            yield


def _copy(model: nn.Module, device: torch.device, train: bool) -> nn.Module:
    """A deep copy on `device`, in train or eval mode, with dropout off either way.

    Train mode for the data-driven proxies: BatchNorm then normalises with the batch's own statistics, as in
    the first training steps, so the ReLU codes and gradients are those the net starts training with (in eval
    mode a fresh BN, running mean 0 and variance 1, is an identity and the activations can drift in scale).
    Dropout is off so that a proxy measures the architecture, not one random mask.
    """
    net = copy.deepcopy(model).to(device)
    net.train(train)
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _weights(net: nn.Module) -> Iterator[torch.Tensor]:
    """The conv and linear weights (biases and BN affines left out, as in the papers)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            yield m.weight


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("nan")


def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0) -> float:
    """SynFlow: data-free, x only gives the input shape and the device.

    BatchNorm is removed (replaced by an identity), as in Abdelfattah et al.'s reference code: with the one
    constant all-ones image, a BN in train mode would normalise every channel to about zero and cut the flow,
    and in eval mode a fresh BN is an identity anyway. In float64 (float32 on MPS, which has no float64): the
    product of |w| over ten layers of a 200k-parameter net reaches 1e20 and more.
    """
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    with _seeded(seed, x.device):
        net = _copy(model, x.device, train=False)
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(parent, name, nn.Identity())
        net = net.to(dtype)
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        ones = torch.ones((1, *x.shape[1:]), dtype=dtype, device=x.device)
        net(ones).sum().backward()
        total = sum((w.detach() * w.grad).abs().sum() for w in _weights(net) if w.grad is not None)
    return _finite(float(total))


def jacov(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0) -> float:
    """-sum(log(e + k) + 1 / (e + k)) over the eigenvalues e of the correlation matrix of the per-image input
    Jacobians (of the summed logits); 0 is the best score, highly correlated Jacobians are very negative.
    NaN when some image's Jacobian is constant (its correlation is undefined)."""
    with _seeded(seed, x.device):
        net = _copy(model, x.device, train=True)
        xx = x.detach().clone().requires_grad_(True)
        out = net(xx)
        out.backward(torch.ones_like(out))
        # The N x N algebra on the CPU in float64: tiny, and the same on every device.
        jac = xx.grad.reshape(len(xx), -1).detach().to("cpu", torch.float64)
        corr = torch.corrcoef(jac)
        if not torch.isfinite(corr).all():
            return float("nan")
        ev = torch.linalg.eigvalsh(corr)
        value = -(torch.log(ev + JACOV_K) + 1.0 / (ev + JACOV_K)).sum()
    return _finite(float(value))


def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, seed: int = 0) -> float:
    """log|det K|, K[i, j] = the number of ReLU units on which images i and j agree (both on or both off),
    over every nn.ReLU of the net. -inf (ranked last) when two images have the same code."""
    n = len(x)
    kernel = torch.zeros(n, n, dtype=torch.float32, device=x.device)  # counts up to ~1e7: exact in float32

    def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal kernel
        c = (out.detach() > 0).reshape(n, -1).to(torch.float32)
        kernel = kernel + c @ c.T + (1 - c) @ (1 - c).T

    with _seeded(seed, x.device):
        net = _copy(model, x.device, train=True)
        handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.ReLU)]
        try:
            with torch.no_grad():
                net(x)
        finally:
            for h in handles:
                h.remove()
        sign, logdet = torch.linalg.slogdet(kernel.to("cpu", torch.float64))
    return float(logdet) if float(sign) > 0 else float("-inf")


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float:
    """Sum over conv/linear weights of ||d loss / dw||_2, loss = mean cross-entropy of the batch."""
    with _seeded(seed, x.device):
        net = _copy(model, x.device, train=True)
        F.cross_entropy(net(x), y.to(x.device)).backward()
        total = sum(w.grad.norm() for w in _weights(net) if w.grad is not None)  # grads carry no graph
    return _finite(float(total))


def params(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None, seed: int = 0) -> float:
    """Trainable parameters (the baseline; the batch is not used)."""
    return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


PROXIES: dict[str, Proxy] = {"synflow": synflow, "jacov": jacov, "naswot": naswot, "grad_norm": grad_norm,
                             "params": params}
# The default combination: one proxy of each kind (data-free flow, activation patterns, gradients). Not
# params: it is the baseline the others are measured against, and jacov is NASWOT's earlier variant.
VOTE = ("synflow", "naswot", "grad_norm")


def get_proxy(name: str) -> Proxy:
    try:
        return PROXIES[name]
    except KeyError:
        raise ValueError(f"unknown proxy {name!r}; choose one of: {', '.join(PROXIES)}") from None


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: Sequence[str] = VOTE,
          seed: int = 0) -> dict[str, float]:
    """{name: value} of the named proxies on one model and batch (ValueError for an unknown name)."""
    fns = {name: get_proxy(name) for name in names}  # every name checked before any work
    return {name: fn(model, x, y, seed=seed) for name, fn in fns.items()}


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, 1 = the highest value; ties share their mean rank; non-finite values rank last (tied)."""
    keyed = [v if math.isfinite(v) else -math.inf for v in map(float, values)]
    order = sorted(range(len(keyed)), key=lambda i: -keyed[i])
    out = [0.0] * len(keyed)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and keyed[order[j + 1]] == keyed[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_vote(table: Sequence[Mapping[str, float]], names: Sequence[str] | None = None) -> list[float]:
    """One vote per candidate (a row of {proxy: value}), higher = better: the mean over the proxies of
    (candidates - rank), i.e. how many candidates it beats per proxy on average (Borda count), 0 to n - 1.
    `names`: the proxies to combine (default: the first row's). Every candidate gets a vote."""
    if not table:
        return []
    names = list(names if names is not None else table[0])
    n = len(table)
    per_proxy = [ranks([row[name] for row in table]) for name in names]
    return [float(np.mean([n - r[i] for r in per_proxy])) if per_proxy else 0.0 for i in range(n)]


def proxy_batch(data: ImageData, n: int = 64, seed: int = 0, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): n training images chosen by the seed (all of them if fewer), normalised as training does
    (data's per-channel mean and std), float32 N x 3 x H x W on `device`, and their labels."""
    count = min(n, len(data.y_train))
    pick = np.sort(np.random.default_rng(seed).permutation(len(data.y_train))[:count])
    device = torch.device(device)
    x = torch.as_tensor(data.x_train[pick]).permute(0, 3, 1, 2).to(device)
    mean, std = torch.as_tensor(data.mean), torch.as_tensor(data.std)
    return normalize_batch(x, mean, std).contiguous(), torch.as_tensor(data.y_train[pick]).to(device)
