"""The network, its masked loss, the config and the pure feature helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamwatch.errors import ConfigError
from streamwatch.model.config import ModelConfig
from streamwatch.model.features import build_windows, ew_alpha, ew_update, gap_feature
from streamwatch.model.forecaster import Forecaster, masked_gaussian_nll


@pytest.mark.parametrize(("cell", "s"), [("gru", 1), ("lstm", 2)])
def test_step_state_shape_is_s_layers_batch_hidden(cell: str, s: int) -> None:
    net = Forecaster(3, cell=cell, layers=2, hidden_size=5)
    x = torch.randn(4, net.input_size)
    state, top = net.step(x, net.initial_state(4))
    assert tuple(state.shape) == (s, 2, 4, 5)
    assert tuple(top.shape) == (4, 5)
    assert torch.equal(top, state[0, -1])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forward_over_a_window_equals_stepping_one_step_at_a_time(cell: str) -> None:
    torch.manual_seed(0)
    net = Forecaster(2, cell=cell, layers=2, hidden_size=6).eval()
    x = torch.randn(7, 3, net.input_size)
    mean, logvar = net(x)
    state = net.initial_state(3)
    for t in range(7):
        state, top = net.step(x[t], state)
        m, lv = net.head_out(top, x[t])
        torch.testing.assert_close(m, mean[t])
        torch.testing.assert_close(lv, logvar[t])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forward_from_a_given_state_gives_the_stepped_outputs_and_gradients(cell: str) -> None:
    """Training runs ``forward``: from a non-zero state too, its outputs are those of
    ``step`` at each time step then the head over the stacked tops, and every parameter
    gets the same gradient, up to float rounding (BLAS kernels may round differently for
    tensors laid out differently in memory)."""
    torch.manual_seed(1)
    net = Forecaster(2, cell=cell, layers=2, hidden_size=6).train()
    x = torch.randn(5, 3, net.input_size)
    state0 = torch.randn(net.state_size, 2, 3, 6)
    mean, logvar = net(x, state0)
    (mean.sum() + logvar.sum()).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    state, tops = state0, []
    for t in range(5):
        state, top = net.step(x[t], state)
        tops.append(top)
    stepped_mean, stepped_logvar = net.head_out(torch.stack(tops), x)
    (stepped_mean.sum() + stepped_logvar.sum()).backward()
    torch.testing.assert_close(mean, stepped_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(logvar, stepped_logvar, rtol=1e-6, atol=1e-7)
    for p, g in zip(net.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_forecast_variance_never_falls_below_the_floor() -> None:
    net = Forecaster(2, hidden_size=4, min_variance=1e-2)
    with torch.no_grad():
        net.head.bias[2:] = -50.0
    _, logvar = net.head_out(torch.zeros(3, 4), torch.zeros(3, net.input_size))
    assert torch.all(logvar >= np.log(1e-2) - 1e-6)


def test_dropout_masks_come_from_the_given_generator() -> None:
    net = Forecaster(2, layers=2, hidden_size=8, dropout=0.5).train()
    x = torch.randn(5, 4, net.input_size)
    a = net(x, generator=torch.Generator().manual_seed(1))[0]
    b = net(x, generator=torch.Generator().manual_seed(1))[0]
    c = net(x, generator=torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_masked_nll_ignores_missing_targets_and_sends_them_no_gradient() -> None:
    mean = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3)
    target = torch.randn(4, 3)
    target[1, 2] = target[3, 0] = float("nan")
    loss = masked_gaussian_nll(mean, logvar, target)
    loss.backward()
    finite = ~torch.isnan(target)
    expected = (0.5 * (np.log(2 * np.pi) + target[finite] ** 2)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    assert mean.grad is not None
    assert mean.grad[1, 2] == 0 and mean.grad[3, 0] == 0
    assert torch.all(mean.grad[finite] != 0)


def test_masked_nll_is_zero_and_finite_when_every_target_is_missing() -> None:
    mean = torch.zeros(2, 2, requires_grad=True)
    loss = masked_gaussian_nll(mean, torch.zeros(2, 2), torch.full((2, 2), float("nan")))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert mean.grad is not None and torch.all(mean.grad == 0)


def test_model_config_rejects_out_of_range_values_naming_field_and_range() -> None:
    with pytest.raises(ConfigError, match=r"hidden_size: Input should be greater than or equal to 2"):
        ModelConfig.build(hidden_size=1)
    with pytest.raises(ConfigError, match=r"burn_in=9 must be in \[0, window-2=6\]"):
        ModelConfig.build(window=8, burn_in=9)
    with pytest.raises(ConfigError, match="cell"):
        ModelConfig.build(cell="rnn")
    with pytest.raises(ConfigError, match="unknown_field"):
        ModelConfig.build(unknown_field=1)
    assert ModelConfig.from_dict(ModelConfig(cell="lstm").model_dump()).cell == "lstm"


def test_normaliser_gives_exact_sample_stats_while_warming_then_forgets_old_values() -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(5.0, 2.0, size=300)
    alpha = ew_alpha(100.0)  # 1/n > alpha for the first 144 values
    mean, var = np.zeros((1, 1)), np.zeros((1, 1))
    n = np.zeros((1, 1), dtype=np.int64)
    for i, x in enumerate(xs):
        mean, var, n = ew_update(mean, var, n, np.array([[x]]), np.array([[True]]), alpha)
        if i == 99:
            assert mean[0, 0] == pytest.approx(xs[:100].mean(), rel=1e-12)
            assert var[0, 0] == pytest.approx(xs[:100].var(), rel=1e-10)
    assert n[0, 0] == 300
    for _ in range(2000):  # a level shift: the exponential weighting follows it
        mean, var, n = ew_update(mean, var, n, np.array([[50.0]]), np.array([[True]]), alpha)
    assert mean[0, 0] == pytest.approx(50.0, abs=0.01)


def test_normaliser_leaves_unobserved_entries_untouched() -> None:
    mean, var = np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])
    n = np.array([[5, 6]])
    x = np.array([[100.0, np.nan]])
    m2, v2, n2 = ew_update(mean, var, n, x, np.array([[False, False]]), 0.1)
    assert np.array_equal(m2, mean) and np.array_equal(v2, var) and np.array_equal(n2, n)


def test_gap_feature_clips_negative_nan_and_huge_gaps() -> None:
    g = gap_feature(np.array([-5.0, np.nan, 0.0, 10.0, 1e9]), max_gap_s=100.0)
    assert g[0] == 0.0 and g[1] == 0.0 and g[2] == 0.0
    assert 0.0 < g[3] < 1.0
    assert g[4] == pytest.approx(1.0)


def test_windows_feed_unobserved_readings_as_missing_and_never_target_untrainable_ones() -> None:
    z = np.arange(5, dtype=np.float64).reshape(1, 5, 1)  # one stream, R=5, C=1
    observed = np.array([[True, False, True, True, True]])
    trainable = np.array([[True, False, True, False, True]])
    valid = np.array([[False, True, True, True, True]])  # the oldest entry is padding
    x, y = build_windows(z, np.full((1, 5), 0.5), observed, trainable, valid,
                         clip=10.0, burn_in=0)
    assert x.shape == (1, 4, 3) and y.shape == (1, 4, 1)
    # inputs: entries 0..3; padding (0) and unobserved (1) are fed as missing
    assert x[0, :, 1].tolist() == [0.0, 0.0, 1.0, 1.0]  # mask column
    assert x[0, :, 0].tolist() == [0.0, 0.0, 2.0, 3.0]
    assert x[0, :, 2].tolist() == [0.0, 0.5, 0.5, 0.5]  # gap, 0 on padding
    # targets: entries 1..4; entry 1 and 3 were not trainable
    assert np.isnan(y[0, [0, 2], 0]).all()
    assert y[0, [1, 3], 0].tolist() == [2.0, 4.0]
    _, y_burn = build_windows(z, np.zeros((1, 5)), observed, trainable, valid, 10.0, 2)
    assert np.isnan(y_burn[0, :2]).all() and y_burn[0, 3, 0] == 4.0
