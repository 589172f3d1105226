"""The network only: stacked GRU/LSTM cells and a Gaussian next-step head.

Input per step (``2 * C + 1`` features, see ``input_size``): the normalised values of the
``C`` channels (0 where missing), the missing-value mask (1 = observed) and the time-gap
feature; with ``seasonal`` (``5 * C + 1``) also the seasonal columns of
``streamwatch.model.features.season_columns``: the profile's change to the next step's
phase, its level there, and a mask. Output: the next step's mean and log-variance per
channel, in normalised units.

Recurrent state is one tensor of shape ``(S, layers, B, hidden)`` with ``S = 1`` for GRU
(h) and ``S = 2`` for LSTM (h, c), so per-stream state can be gathered and scattered with
one ``index_select``/``index_copy_`` whatever the cell.

Stacked ``GRUCell``/``LSTMCell`` serve both the per-step scoring path (one call for every
stream of a wave; faster than ``nn.GRU`` with sequence length 1) and training (a Python
loop over the window: about as fast as ``nn.GRU`` at these sizes, measured here, and it
shares the parameters with no copying). Windows, replay and optimisation live in
``streamwatch.model.trainer``; per-stream state in ``streamwatch.model.state``.

>>> import torch
>>> net = Forecaster(n_channels=2, hidden_size=8)
>>> x = torch.zeros(5, net.input_size)
>>> state, top = net.step(x, net.initial_state(5))
>>> mean, logvar = net.head_out(top, x)
>>> tuple(state.shape), tuple(mean.shape), tuple(logvar.shape)
((1, 1, 5, 8), (5, 2), (5, 2))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from streamwatch.errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)
SEASON_GAIN_INIT = 0.5
"""Starting gain of the seasonal-naive change (a mild prior, like the persistence skip)."""


class Forecaster(nn.Module):
    """Stacked recurrent cells with a Gaussian head forecasting the next reading.

    Parameters
    ----------
    n_channels
        Channels of the kind (``C``), >= 1.
    cell
        ``"gru"`` or ``"lstm"``.
    layers
        Stacked layers, >= 1.
    hidden_size
        Units per layer, >= 1.
    dropout
        Dropout probability between stacked layers, used only in training mode with masks
        drawn from the generator passed to ``forward`` (one mask per window: the same
        units drop at every step).
    min_variance
        Floor of the forecast variance: ``var = softplus(raw) + min_variance``.
    seasonal
        Take the seasonal input columns too (``ModelConfig.season_s``).

    Notes
    -----
    A learnable per-channel skip adds ``skip * x_t`` (the current normalised value, 0 when
    missing) to the forecast mean. It starts at 0.5, a mild persistence prior that helps
    a cold model; the network learns how much of it to keep. With ``seasonal``, a second
    per-channel gain adds ``season_gain * change`` (the seasonal-naive next change, 0 when
    unknown), starting at ``SEASON_GAIN_INIT``: recurring transitions are forecast from the
    first period on instead of after many optimiser steps.
    """

    def __init__(
        self,
        n_channels: int,
        cell: str = "gru",
        layers: int = 1,
        hidden_size: int = 32,
        dropout: float = 0.0,
        min_variance: float = 1e-4,
        seasonal: bool = False,
    ) -> None:
        super().__init__()
        if n_channels < 1:
            raise ConfigError(f"n_channels={n_channels} must be >= 1")
        if cell not in ("gru", "lstm"):
            raise ConfigError(f"cell={cell!r} must be 'gru' or 'lstm'")
        if layers < 1 or hidden_size < 1:
            raise ConfigError(f"layers={layers} and hidden_size={hidden_size} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout={dropout} must be in [0, 1)")
        if min_variance <= 0.0:
            raise ConfigError(f"min_variance={min_variance} must be > 0")
        self.n_channels = n_channels
        self.cell_type = cell
        self.layers = layers
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.min_variance = min_variance
        self.seasonal = seasonal
        self.input_size = (5 if seasonal else 2) * n_channels + 1
        self.state_size = 2 if cell == "lstm" else 1
        cell_cls = nn.LSTMCell if cell == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList(
            cell_cls(self.input_size if i == 0 else hidden_size, hidden_size)
            for i in range(layers)
        )
        self.head = nn.Linear(hidden_size, 2 * n_channels)
        self.skip = nn.Parameter(torch.full((n_channels,), 0.5))
        if seasonal:
            self.season_gain = nn.Parameter(torch.full((n_channels,), SEASON_GAIN_INIT))
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            # softplus(0.5413) + floor ~= 1: unit forecast variance to start with.
            self.head.bias[n_channels:] = math.log(math.expm1(max(1.0 - min_variance, 1e-3)))

    def initial_state(self, batch: int) -> Tensor:
        """Zero recurrent state for ``batch`` streams: ``(S, layers, batch, hidden)``."""
        weight = self.head.weight
        return weight.new_zeros(self.state_size, self.layers, batch, self.hidden_size)

    def step(
        self, x: Tensor, state: Tensor, masks: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """One recurrent step for a batch: ``x`` (B, input_size), ``state`` (S, L, B, H).

        Returns the new state and the top layer's output (B, H). ``masks`` (training only)
        are dropout masks applied to the input of layers 1.. (already scaled).
        """
        new_h: list[Tensor] = []
        new_c: list[Tensor] = []
        inp = x
        for i, cell in enumerate(self.cells):
            if i > 0 and masks is not None:
                inp = inp * masks[i - 1]
            if self.state_size == 2:
                h, c = cell(inp, (state[0, i], state[1, i]))
                new_c.append(c)
            else:
                h = cell(inp, state[0, i])
            new_h.append(h)
            inp = h
        if self.state_size == 2:
            return torch.stack([torch.stack(new_h), torch.stack(new_c)]), inp
        return torch.stack(new_h).unsqueeze(0), inp

    def head_out(self, top: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian head: next-step ``(mean, logvar)`` per channel from the top output.

        ``x`` is the step's input (its first ``C`` columns feed the persistence skip).
        """
        out = self.head(top)
        c = self.n_channels
        mean = out[..., :c] + self.skip * x[..., :c]
        if self.seasonal:
            mean = mean + self.season_gain * x[..., 2 * c + 1:3 * c + 1]
        # contiguous(): softplus on the strided slice is ~4x slower (measured here)
        var = F.softplus(out[..., c:].contiguous()) + self.min_variance
        return mean, torch.log(var)

    def forward(
        self, x: Tensor, state: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Run a window: ``x`` (T, B, input_size) -> ``(mean, logvar)`` each (T, B, C).

        ``state`` defaults to zeros. Dropout (training mode, ``dropout > 0``) draws one
        mask per window from ``generator``.
        """
        steps, batch = x.shape[0], x.shape[1]
        if state is None:
            state = self.initial_state(batch)
        masks: list[Tensor] | None = None
        if self.training and self.dropout > 0.0 and self.layers > 1:
            keep = 1.0 - self.dropout
            masks = [
                torch.bernoulli(
                    torch.full((batch, self.hidden_size), keep, device=x.device),
                    generator=generator,
                ) / keep
                for _ in range(self.layers - 1)
            ]
        # ``step`` per time step, without stacking the state into one tensor at every
        # step: the same operations on the cells, ~4 fewer autograd nodes per step
        lstm = self.state_size == 2
        hs = list(state[0].unbind(0))
        cs = list(state[1].unbind(0)) if lstm else []
        tops = []
        for t in range(steps):
            inp = x[t]
            for i, cell in enumerate(self.cells):
                if i > 0 and masks is not None:
                    inp = inp * masks[i - 1]
                if lstm:
                    hs[i], cs[i] = cell(inp, (hs[i], cs[i]))
                else:
                    hs[i] = cell(inp, hs[i])
                inp = hs[i]
            tops.append(inp)
        return self.head_out(torch.stack(tops), x)


def masked_gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood over the finite entries of ``target``.

    ``target`` holds NaN where the value is missing or must not be learned (an anomaly,
    a padding step): those entries contribute nothing, not even through the gradient.
    Returns a scalar (0 when no entry is finite).

    >>> import torch
    >>> m, lv = torch.zeros(2, 2), torch.zeros(2, 2)
    >>> y = torch.tensor([[0.0, float("nan")], [1.0, float("nan")]])
    >>> round(float(masked_gaussian_nll(m, lv, y)), 4)  # 0.5*log(2*pi) + 0.25
    1.1689
    """
    mask = ~torch.isnan(target)
    safe_target = torch.where(mask, target, mean.detach())
    nll = 0.5 * (LOG_2PI + logvar + (safe_target - mean) ** 2 * torch.exp(-logvar))
    count = mask.sum()
    return torch.where(mask, nll, torch.zeros_like(nll)).sum() / count.clamp(min=1)
