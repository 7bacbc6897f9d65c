"""ml.phase.linear_fit: the least-squares fit of the linear phase model recovers a known linear map, its
features are the model's, and through train_phase it does as well as the Adam steps on held-out rows."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill4d.errors import Distill4dError  # noqa: E402
from distill4d.ml.phase import PhaseTrainConfig, train_phase  # noqa: E402
from distill4d.ml.phase.linear_fit import cluster_features, fit_linear  # noqa: E402
from distill4d.ml.phase.model import PhaseConfig, RadialLinear  # noqa: E402


def _known_model(seed: int = 0):
    config = PhaseConfig(model="linear", size=8, cluster=5, n_masks=2)
    model = RadialLinear(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.w1.copy_(torch.randn(model.w1.shape, generator=g))
        model.w2.copy_(torch.randn(model.w2.shape, generator=g))
        model.bias.fill_(0.3)
    return config, model


def _args(model):
    rings = model.rings.numpy()
    return model.bins.numpy(), model.config.bins, rings, int(rings.max()) + 1


def test_cluster_features_give_the_models_output():
    config, model = _known_model()
    padded = np.random.default_rng(1).standard_normal((14, 12, 8, 8)).astype(np.float32)
    bins, n_bins, rings, n_rings = _args(model)
    F = cluster_features(padded, bins, n_bins, rings, n_rings)
    C = (model.w2.T @ model.w1).detach().double().numpy()
    with torch.no_grad():
        out = model(torch.as_tensor(padded)[None])[0].double().numpy()
    np.testing.assert_allclose(np.einsum("xyrb,rb->xy", F, C) + 0.3, out, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_fit_recovers_a_known_rank_limited_linear_map(noise):
    """Labels made by a known rank-2 model (+ Gaussian noise of 5 % of the label's spread): the fitted
    coefficient matrix C = w2ᵀ w1 is the known one within 1e-4 (no noise) / 3 % (noise), relative
    Frobenius norm; the bias within 0.01 / 0.03."""
    config, model = _known_model()
    rng = np.random.default_rng(2)
    padded = rng.standard_normal((44, 40, 8, 8)).astype(np.float32)
    with torch.no_grad():
        z = model(torch.as_tensor(padded)[None])[0].double().numpy()
    z = z + noise * z.std() * rng.standard_normal(z.shape)
    train = np.ones(z.shape, bool)
    train[30:] = False
    w1, w2, bias, info = fit_linear([(padded, z, train, ~train)], *_args(model), rank=2)
    C_true = (model.w2.T @ model.w1).detach().double().numpy()
    err = np.linalg.norm(w2.T @ w1 - C_true) / np.linalg.norm(C_true)
    assert err < (1e-4 if noise == 0 else 0.03), err
    assert abs(bias - 0.3) < (0.01 if noise == 0 else 0.03)
    assert info["ridge"] in [f["ridge"] for f in info["fits"]] and info["sweeps"] >= 1


def test_binned_forward_is_the_models_forward():
    """Training the linear model on radial-bin sums computes the same function (float32 rounding)."""
    config, model = _known_model(3)
    block = torch.as_tensor(np.random.default_rng(4).standard_normal((2, 9, 7, 8, 8)), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_binned(model.bin_sums(block)), model(block), rtol=1e-5, atol=1e-5)


def test_train_phase_lstsq_on_a_small_scan():
    """A simulated weak phase object (as test_phase_train, 432 training positions): the least-squares fit
    (milliseconds) reaches a held-out Pearson r within 0.05 of 300 Adam steps' (measured 0.882 against
    0.889; Adam early-stopped at step 550 of 2000 reaches 0.920: on so few positions the steps generalise
    better; on the ptycho benchmark's blocks of 600-5,600 positions the two are within 0.011 SSIM), and
    the card says how it was fitted."""
    from distill4d.simulate.phase_object import phase_object_scan

    scan = phase_object_scan(scan_shape=(24, 24), pattern_size=32, q_pixel_inv_A=0.08, semiangle_mrad=25.0,
                             energy_eV=80e3, dose_per_pattern=2e4, seed=3)
    config = PhaseConfig(model="linear", size=16, input_norm="pattern")
    common = dict(config=config, pad="wrap", label_units="rad", scheduler="inline", progress=False)
    _, adam = train_phase(scan.datacube, scan.phase_rad, train=PhaseTrainConfig(max_steps=300, eval_every=50), **common)
    model, card = train_phase(scan.datacube, scan.phase_rad, train=PhaseTrainConfig(fit="lstsq"), **common)
    r_adam, r_lsq = adam["metrics"]["held_out_pearson_r"], card["metrics"]["held_out_pearson_r"]
    assert r_lsq > 0.85 and r_lsq > r_adam - 0.05, (r_lsq, r_adam)
    assert card["stopped"] == "least_squares" and card["train"]["fit"] == "lstsq" and "ridge_relative" in card["fit"]
    assert isinstance(model, RadialLinear)


def test_lstsq_is_for_the_linear_model_only():
    with pytest.raises(Distill4dError, match="fit"):
        PhaseTrainConfig(fit="svd")
    from distill4d.simulate.phase_object import phase_object_scan

    scan = phase_object_scan(scan_shape=(8, 8), pattern_size=16, q_pixel_inv_A=0.08, semiangle_mrad=25.0,
                             energy_eV=80e3, seed=0)
    with pytest.raises(Distill4dError, match="linear model"):
        train_phase(scan.datacube, scan.phase_rad, config=PhaseConfig(model="conv4d", size=8),
                    train=PhaseTrainConfig(fit="lstsq"), progress=False)


def test_bad_inputs_are_named_in_one_line():
    from distill4d.errors import Distill4dError

    with pytest.raises(Distill4dError, match="padded"):
        cluster_features(np.zeros((5, 5, 4)), np.zeros(16, int), 2, np.zeros((3, 3), int), 2)
    with pytest.raises(Distill4dError, match="rank"):
        fit_linear([], np.zeros(16, int), 2, np.zeros((3, 3), int), 2, 0)
