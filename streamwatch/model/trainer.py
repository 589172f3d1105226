"""Online training: a replay buffer of windows and mini-batch truncated BPTT with Adam.

Windows start from a zero recurrent state: the first ``burn_in`` steps only warm the
state and carry no loss, the remaining steps are trained by backpropagation through the
whole window (truncated BPTT of length ``window``). Zero-state windows cost no memory
per stream (storing each step's hidden state would cost ``window * hidden`` floats per
stream) and stay valid as parameters change, where stored states go stale.

Cost per optimiser step: ``batch_size`` windows of ``window`` steps, forward and
backward; ``train_every`` learned readings pay for one step, so the cost per reading is
bounded by the configuration whatever the number of streams.

Randomness (replay sampling, dropout masks) comes from a private ``numpy`` Generator and
a private ``torch.Generator``, both checkpointed, so a restored trainer takes exactly the
steps an uninterrupted one would.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import torch

from streamwatch.errors import CheckpointError
from streamwatch.heap import SpareArrays
from streamwatch.model.config import ModelConfig
from streamwatch.model.forecaster import Forecaster, masked_gaussian_nll

log = logging.getLogger(__name__)


class ReplayBuffer:
    """Fixed-capacity ring of training windows: inputs (T, F) and targets (T, C) each.

    Arrays are allocated on the first ``add``; the oldest windows are replaced first.
    """

    def __init__(self, capacity: int, steps: int, n_features: int, n_channels: int) -> None:
        self.capacity = capacity
        self.steps = steps
        self.n_features = n_features
        self.n_channels = n_channels
        self.x = np.zeros((0, steps, n_features), dtype=np.float32)
        self.y = np.zeros((0, steps, n_channels), dtype=np.float32)
        self.pos = 0
        self.filled = 0
        self.added = 0
        self._spare = SpareArrays()

    def __len__(self) -> int:
        return self.filled

    def _allocate(self) -> None:
        if self.x.shape[0] != self.capacity:
            self.x = np.zeros((self.capacity, self.steps, self.n_features), dtype=np.float32)
            self.y = np.full((self.capacity, self.steps, self.n_channels), np.nan,
                             dtype=np.float32)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Append windows ``x`` (n, T, F) and ``y`` (n, T, C)."""
        n = x.shape[0]
        if n == 0:
            return
        self._allocate()
        self.added += n
        if n > self.capacity:
            x, y, n = x[-self.capacity:], y[-self.capacity:], self.capacity
        idx = (self.pos + np.arange(n)) % self.capacity
        self.x[idx] = x
        self.y[idx] = y
        self.pos = int((self.pos + n) % self.capacity)
        self.filled = min(self.capacity, self.filled + n)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (its windows are copies, in the spare arrays of the previous one
        once nothing holds that: ``heap.SpareArrays``; the buffer is most of a checkpoint)."""
        return {
            "x": torch.from_numpy(self._spare.copy("x", self.x[: self.filled])),
            "y": torch.from_numpy(self._spare.copy("y", self.y[: self.filled])),
            "pos": self.pos,
            "filled": self.filled,
            "added": self.added,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = np.asarray(state["x"].numpy() if isinstance(state["x"], torch.Tensor) else state["x"])
        y = np.asarray(state["y"].numpy() if isinstance(state["y"], torch.Tensor) else state["y"])
        filled, pos = int(state["filled"]), int(state["pos"])
        expect_x = (filled, self.steps, self.n_features)
        if x.shape != expect_x or y.shape != (filled, self.steps, self.n_channels):
            raise CheckpointError(
                f"replay buffer holds windows of shape {x.shape[1:]}/{y.shape[1:]}, "
                f"expected {expect_x[1:]}/{(self.steps, self.n_channels)}"
            )
        if filled > self.capacity or not 0 <= pos < max(self.capacity, 1):
            raise CheckpointError(
                f"replay buffer with {filled} windows at position {pos} does not fit "
                f"replay_capacity={self.capacity}"
            )
        self.filled, self.pos, self.added = filled, pos, int(state.get("added", filled))
        self.x = np.zeros((0, self.steps, self.n_features), dtype=np.float32)
        if filled:
            self._allocate()
            self.x[:filled] = x
            self.y[:filled] = y


class Trainer:
    """Owns the optimiser, the replay buffer and the training randomness of one model."""

    def __init__(self, model: Forecaster, config: ModelConfig) -> None:
        self.model = model
        self.config = config
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.replay = ReplayBuffer(
            config.replay_capacity, config.window, model.input_size, model.n_channels
        )
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.steps = 0
        self.skipped_steps = 0
        self.pending = 0
        self.last_loss = math.nan

    def on_learned(self, n_readings: int) -> int:
        """Count learned readings; take one step per ``train_every``. Returns steps taken."""
        self.pending += int(n_readings)
        taken = 0
        while self.pending >= self.config.train_every:
            self.pending -= self.config.train_every
            if self.step() is not None:
                taken += 1
        return taken

    def step(self) -> float | None:
        """One Adam step on a random mini-batch of replayed windows (None if no data)."""
        if len(self.replay) == 0:
            log.debug("training step skipped: replay buffer empty")
            return None
        size = min(self.config.batch_size, len(self.replay))
        idx = np.sort(self.rng.choice(len(self.replay), size=size, replace=False))
        x = torch.from_numpy(self.replay.x[idx]).transpose(0, 1)
        y = torch.from_numpy(self.replay.y[idx]).transpose(0, 1)
        if not bool(torch.isfinite(y).any()):
            log.debug("training step skipped: no finite target in the mini-batch")
            return None
        self.model.train()
        try:
            mean, logvar = self.model(x, generator=self.generator)
            loss = masked_gaussian_nll(mean, logvar, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            if not (bool(torch.isfinite(loss)) and bool(torch.isfinite(norm))):
                # Never let one bad batch turn every weight into NaN (which would make
                # every forecast NaN and every score 0): skip it, loudly.
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                log.warning("training step skipped: non-finite loss or gradient",
                            extra={"loss": float(loss.detach()), "grad_norm": float(norm),
                                   "skipped_steps": self.skipped_steps})
                return None
            self.optimizer.step()
        finally:
            self.model.eval()
        self.steps += 1
        self.last_loss = float(loss.detach())
        log.debug("training step", extra={"step": self.steps, "loss": self.last_loss,
                                          "windows": size})
        return self.last_loss

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: nothing in it aliases live tensors. (``Optimizer.state_dict`` hands
        out the live moment tensors and ``load_state_dict`` keeps tensors that already have
        the right dtype, so a state loaded in the same process would share, and double-step,
        the source's Adam moments.)"""
        return {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "replay": self.replay.state_dict(),
            "rng_numpy": self.rng.bit_generator.state,
            "rng_torch": self.generator.get_state(),
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "pending": self.pending,
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.replay.load_state_dict(state["replay"])
            rng = np.random.default_rng()
            rng.bit_generator.state = state["rng_numpy"]
            self.generator.set_state(state["rng_torch"])
            self.rng = rng
            self.steps = int(state["steps"])
            self.skipped_steps = int(state.get("skipped_steps", 0))
            self.pending = int(state["pending"])
            self.last_loss = float(state["last_loss"])
        except KeyError as exc:
            raise CheckpointError(f"trainer state lacks the field {exc.args[0]!r}") from None
        except (ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"trainer state does not fit this model: {exc}") from exc
