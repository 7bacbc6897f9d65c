"""FCU-Net: complex layers, the Fourier input layer, training/resume, weights, and the shipped model."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill4d.ml._common.layers import (  # noqa: E402
    ComplexConv2d,
    ComplexMagnitudeNorm2d,
    ModReLU,
    complex_cat,
    complex_split,
    crelu,
    magnitude_max_pool,
    mc_dropout,
    spectral_pool,
)
from distill4d.ml._common.resample import resample_patterns  # noqa: E402
from distill4d.ml.fcunet import DEFAULT_WEIGHTS  # noqa: E402
from distill4d.ml.fcunet.detect import FCUNetDetector, load_fcunet, peaks_from_prediction  # noqa: E402
from distill4d.ml.fcunet.model import FCUNet, FCUNetConfig, FCUNetViews, _mirror, cross_spectrum  # noqa: E402


def _direct_complex_conv(z: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """out[o, i, j] = Σ_c Σ_kl W[o, c, k, l] z[c, i + k − p, j + l − p] + b[o] (zero padding), complex."""
    C, H, Wd = z.shape
    O, _, K, _ = W.shape
    p = K // 2
    zp = np.zeros((C, H + 2 * p, Wd + 2 * p), complex)
    zp[:, p : p + H, p : p + Wd] = z
    out = np.zeros((O, H, Wd), complex)
    for o in range(O):
        for k in range(K):
            for ll in range(K):
                out[o] += np.einsum("c,cij->ij", W[o, :, k, ll], zp[:, k : k + H, ll : ll + Wd])
        out[o] += b[o]
    return out


def test_complex_conv_equals_direct_complex_computation():
    torch.manual_seed(0)
    conv = ComplexConv2d(3, 2, kernel_size=3)
    with torch.no_grad():
        conv.bias_re.normal_()
        conv.bias_im.normal_()
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 7, 6)) + 1j * rng.normal(size=(3, 7, 6))
    x = torch.tensor(np.concatenate([z.real, z.imag])[None], dtype=torch.float64)
    conv = conv.double()
    out = conv(x)[0].detach().numpy()
    W = conv.weight_re.detach().numpy() + 1j * conv.weight_im.detach().numpy()
    b = conv.bias_re.detach().numpy() + 1j * conv.bias_im.detach().numpy()
    ref = _direct_complex_conv(z, W, b)
    assert np.allclose(out[:2], ref.real, atol=1e-12)
    assert np.allclose(out[2:], ref.imag, atol=1e-12)
    with pytest.raises(ValueError, match="expects 6 real channels"):
        conv(torch.zeros(1, 4, 5, 5, dtype=torch.float64))


def test_complex_cat_keeps_real_with_real():
    a = torch.arange(4.0).reshape(1, 4, 1, 1)  # re [0, 1], im [2, 3]
    b = torch.arange(10.0, 12.0).reshape(1, 2, 1, 1)  # re [10], im [11]
    assert complex_cat(a, b).flatten().tolist() == [0, 1, 10, 2, 3, 11]


def test_mc_dropout_same_mask_on_real_and_imaginary_and_off_when_inactive():
    z = torch.ones(2, 8, 16, 16)
    torch.manual_seed(3)
    d = mc_dropout(z, 0.5, active=True)
    assert torch.equal(d[:, :4] == 0, d[:, 4:] == 0)
    assert 0.3 < float((d == 0).float().mean()) < 0.7
    assert torch.equal(mc_dropout(z, 0.5, active=False), z)


def test_spectral_pool_keeps_low_frequencies():
    n = 32
    x = torch.arange(n, dtype=torch.float64)
    img = (2.0 + torch.cos(2 * np.pi * 3 * x / n))[:, None].expand(n, n)[None, None]
    pooled = spectral_pool(img)
    xs = torch.arange(n // 2, dtype=torch.float64)
    ref = (2.0 + torch.cos(2 * np.pi * 3 * xs / (n // 2)))[:, None].expand(n // 2, n // 2)
    assert pooled.shape == (1, 1, n // 2, n // 2)
    assert torch.allclose(pooled[0, 0], ref, atol=1e-12)


def _rotate(z: torch.Tensor, phi: float) -> torch.Tensor:
    """The split complex map ``z`` times ``exp(i phi)``."""
    re, im = complex_split(z)
    return torch.cat([re * np.cos(phi) - im * np.sin(phi), re * np.sin(phi) + im * np.cos(phi)], dim=1)


def test_phase_equivariant_layers_commute_with_a_unit_phase_factor():
    torch.manual_seed(0)
    z = torch.randn(3, 8, 6, 6, dtype=torch.float64)
    phi = 0.7
    norm = ComplexMagnitudeNorm2d(4).double()
    act = ModReLU(4).double()
    for layer in (norm, act, magnitude_max_pool):
        assert torch.allclose(layer(_rotate(z, phi)), _rotate(layer(z), phi), atol=1e-12)
    norm.eval()  # running statistics: still a real gain per channel
    assert torch.allclose(norm(_rotate(z, phi)), _rotate(norm(z), phi), atol=1e-12)
    # the published layers do not: CReLU and part-wise max pooling see the absolute phase
    assert not torch.allclose(crelu(_rotate(z, phi)), _rotate(crelu(z), phi), atol=1e-3)


def test_magnitude_max_pool_takes_the_value_of_largest_modulus():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2, 3, 4, 6)) + 1j * rng.normal(size=(2, 3, 4, 6))
    x = torch.tensor(np.concatenate([z.real, z.imag], axis=1))
    out = magnitude_max_pool(x).numpy()
    blocks = z.reshape(2, 3, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 3, 4)
    ref = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)[..., 0]
    assert np.allclose(out[:, :3], ref.real) and np.allclose(out[:, 3:], ref.imag)


def test_modrelu_thresholds_the_modulus_and_keeps_the_phase():
    act = ModReLU(1, bias=-0.5).double()
    z = torch.tensor([[[[0.3]], [[0.4]]], [[[3.0]], [[4.0]]]], dtype=torch.float64)  # |z| = 0.5 and 5
    out = act(z)
    assert torch.allclose(out[0], torch.zeros(2, 1, 1, dtype=torch.float64), atol=1e-6)  # |z| + b = 0
    assert torch.allclose(out[1].flatten(), torch.tensor([2.7, 3.6], dtype=torch.float64))  # 4.5 · (0.6, 0.8)


@pytest.mark.parametrize("layer", [ModReLU(3), ComplexMagnitudeNorm2d(3)])
def test_equivariant_layers_name_a_wrong_channel_count(layer):
    with pytest.raises(ValueError, match="expects 6 real channels"):
        layer(torch.zeros(1, 4, 2, 2))


def test_equivariant_fcunet_follows_a_pattern_shift_where_the_published_one_need_not():
    """A pattern shifted by s px should give the prediction shifted by s px. At initialisation
    (seed 0, batch statistics of the pattern itself) the phase-equivariant network's shifted-back
    output differs from the unshifted one by < 6 % of its maximum for shifts up to 3 px, less
    than half the published layers' change (measured: equivariant 0.02-0.04, published 0.09-0.13)."""
    n = 128
    yy, xx = np.mgrid[:n, :n]
    disk = lambda cx, cy: (np.hypot(xx - cx, yy - cy) < 4).astype(np.float32)  # noqa: E731
    c = n // 2
    pat = disk(c, c) + 0.3 * disk(c + 20.3, c + 3.1) + 0.3 * disk(c - 20.3, c - 3.1) + 0.2 * disk(c + 5, c + 15)
    probe = torch.tensor(disk(c, c))[None]
    changes = {}
    for eq in (False, True):
        torch.manual_seed(0)
        m = FCUNet(FCUNetConfig(size=n, filters=4, depth=3, real_layers=2, equivariant=eq))
        m.set_mc_dropout(False)
        with torch.no_grad():
            m.train()
            m(torch.tensor(pat)[None].repeat(2, 1, 1), probe.repeat(2, 1, 1))  # batch statistics
            m.eval()
            y0 = m(torch.tensor(pat)[None], probe)[0].numpy()
            worst = 0.0
            for s in ((1, 0), (0, 1), (2, 1), (3, -2)):
                y = m(torch.tensor(np.roll(pat, s, axis=(0, 1)))[None], probe)[0].numpy()
                back = np.roll(y, (-s[0], -s[1]), axis=(0, 1))
                worst = max(worst, float(np.abs(back - y0).max() / np.abs(y0).max()))
        changes[eq] = worst
    assert changes[True] < 0.06, changes
    assert changes[False] > 2 * changes[True], changes


def test_cross_spectrum_is_shift_equivariant():
    """Shifting the pattern by (dx, dy) px multiplies C by exp(−2πi(kx·dx + ky·dy)/N), |C| unchanged."""
    rng = np.random.default_rng(0)
    n = 32
    pattern = rng.random((n, n))
    probe = np.zeros((n, n))
    probe[n // 2 - 3 : n // 2 + 4, n // 2 - 3 : n // 2 + 4] = 1.0
    dx, dy = 3, -5
    shifted = np.roll(pattern, (dx, dy), axis=(0, 1))
    C0 = cross_spectrum(torch.tensor(pattern[None]), torch.tensor(probe[None]))[0].numpy()
    C1 = cross_spectrum(torch.tensor(shifted[None]), torch.tensor(probe[None]))[0].numpy()
    c0, c1 = C0[0] + 1j * C0[1], C1[0] + 1j * C1[1]
    k = np.fft.fftfreq(n) * n
    ramp = np.exp(-2j * np.pi * (k[:, None] * dx + k[None, :] * dy) / n)
    assert np.allclose(c1, c0 * ramp, atol=1e-10)
    assert np.isclose(np.abs(c0).max(), 1.0)  # normalised per sample
    # scaling the pattern or the probe does not change the input (per-sample normalisation)
    C2 = cross_spectrum(torch.tensor(7.0 * pattern[None]), torch.tensor(0.1 * probe[None]))[0].numpy()
    assert np.allclose(C2, C0, atol=1e-12)


def test_fcunet_shapes_and_config_errors():
    torch.manual_seed(0)
    for pool in ("max", "spectral"):
        m = FCUNet(FCUNetConfig(size=32, filters=2, depth=2, pool=pool, out_channels=2, real_filters=4,
                                correlation_skip=pool == "max", real_layers=3))
        y = m(torch.rand(3, 32, 32), torch.rand(3, 32, 32))
        assert y.shape == (3, 32, 32) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="shape \\(batch, 32, 32\\)"):
        m(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="power of two"):
        FCUNetConfig(size=48)
    with pytest.raises(ValueError, match="pool"):
        FCUNetConfig(pool="avg")
    with pytest.raises(ValueError, match="dropout"):
        FCUNetConfig(dropout=1.0)


def test_mirror_keeps_the_direct_beam_pixel_and_is_its_own_inverse():
    img = torch.zeros(1, 32, 32)
    img[0, 16, 16], img[0, 19, 14] = 1.0, 2.0
    m = _mirror(img, (-2, -1))
    assert m[0, 16, 16] == 1.0 and m[0, 13, 18] == 2.0  # (16 + 3, 16 - 2) -> (16 - 3, 16 + 2)
    assert torch.equal(_mirror(m, (-2, -1)), img)


@pytest.mark.parametrize("views", ["flips", "dihedral"])
def test_views_make_the_prediction_mirror_with_its_input(views):
    """Whatever the weights, the view-averaged prediction of a mirrored (or, for dihedral,
    transposed) pattern and probe is the mirrored prediction; 'none' is the model itself."""
    torch.manual_seed(2)
    model = FCUNet(FCUNetConfig(size=32, filters=2, depth=2, out_channels=2, real_filters=4)).eval()
    model.set_mc_dropout(False)
    x, p = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
    v = FCUNetViews(model, views)
    with torch.no_grad():
        y = v(x, p)
        for dims in [(-2,), (-1,), (-2, -1)]:
            torch.testing.assert_close(v(_mirror(x, dims), _mirror(p, dims)), _mirror(y, dims), atol=1e-5, rtol=1e-4)
        if views == "dihedral":
            torch.testing.assert_close(v(x.transpose(-1, -2), p.transpose(-1, -2)), y.transpose(-1, -2), atol=1e-5,
                                       rtol=1e-4)
        # the plain model is not mirror-equivariant, so the test above is not vacuous
        assert not torch.allclose(model(_mirror(x, (-2,)), _mirror(p, (-2,))), _mirror(model(x, p), (-2,)), atol=1e-4)
        torch.testing.assert_close(FCUNetViews(model, "none")(x, p), model(x, p))
    with pytest.raises(ValueError, match="views must be one of"):
        FCUNetViews(model, "rotations")


def _write_weights(model: FCUNet, path, q_pixel_inv_A=0.025):
    torch.save(model.state_dict(), path)
    card = {"model": "fcunet", "architecture": model.config.to_dict(),
            "input": {"size_px": model.config.size, "q_pixel_inv_A": q_pixel_inv_A}}
    path.with_suffix(".json").write_text(json.dumps(card))


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = FCUNet(FCUNetConfig(size=32, filters=2, depth=2, out_channels=2, real_filters=4))
    model.train()
    model(torch.rand(4, 32, 32), torch.rand(4, 32, 32))  # move the batch-norm running statistics
    model.eval()
    model.set_mc_dropout(False)
    _write_weights(model, tmp_path / "m.pt")
    loaded, card = load_fcunet(tmp_path / "m.pt")
    loaded.set_mc_dropout(False)
    x, p = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, p), loaded(x, p))
    # MC dropout with the same seed: identical too
    model.set_mc_dropout(True)
    loaded.set_mc_dropout(True)
    with torch.no_grad():
        torch.manual_seed(5)
        a = model(x, p)
        torch.manual_seed(5)
        b = loaded(x, p)
    assert torch.equal(a, b)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.pt does not exist"):
        load_fcunet(tmp_path / "none.pt")
    model = FCUNet(FCUNetConfig(size=32, filters=2, depth=2, out_channels=2, real_filters=4))
    _write_weights(model, tmp_path / "m.pt")
    card = json.loads((tmp_path / "m.json").read_text())
    card["architecture"]["filters"] = 4
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_fcunet(tmp_path / "m.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    (tmp_path / "bad.json").write_text((tmp_path / "m.json").read_text())
    with pytest.raises(ValueError, match="cannot read FCU-Net weights"):
        load_fcunet(tmp_path / "bad.pt")


def test_resampling_maps_peaks_back_to_the_input_pixels():
    """A spot at a known input position, resampled to the model grid (other pixel size and origin),
    found there and mapped back, lands within 0.05 px of where it was."""
    n_in, size = 96, 64
    x = np.arange(n_in)
    true = (61.3, 30.7)
    img = np.exp(-((x[:, None] - true[0]) ** 2 + (x[None, :] - true[1]) ** 2) / (2 * 2.5**2))
    origin, scale = (47.6, 49.2), 1.25  # model pixel = 1.25 input pixels
    on_grid = resample_patterns(img[None], origin, scale, size)
    found = peaks_from_prediction(on_grid / on_grid.max(), min_intensity=0.5)[0]
    assert len(found) == 1
    det = object.__new__(FCUNetDetector)
    det.size, det.origin, det.scale = size, origin, scale
    qx, qy = det.to_input_px(found[:, 0], found[:, 1])
    assert np.hypot(qx[0] - true[0], qy[0] - true[1]) < 0.05


# --------------------------------------------------------------------------- training (needs abTEM)
SMALL = dict(
    n_samples=4, shard_size=2, shape=(32, 32), q_pixel_inv_A=0.08, thickness_A=(10.0, 40.0), n_thicknesses=2,
    prototypes=("Cu", "MgO"), energies_kV=(200.0,), semiangle_mrad=(2.0, 3.0), seed=3,
)


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    pytest.importorskip("abtem")
    from distill4d.simulate.library import LibraryConfig, build_library

    folder = tmp_path_factory.mktemp("fcunet_lib") / "lib"
    build_library(LibraryConfig(**SMALL), folder, scheduler="inline", progress=False)
    return folder


def _tiny_config(**kw):
    from distill4d.ml.fcunet.train import FCUNetTrainConfig

    base = dict(model=FCUNetConfig(size=32, filters=2, depth=2, out_channels=2, real_filters=4), batch_size=2,
                max_steps=4, warmup_steps=1, val_entries=2, val_every_steps=2, num_workers=0, seed=0)
    base.update(kw)
    return FCUNetTrainConfig(**base)


def _gaussian_spots(peaks, shape=(32, 32), sigma=0.8):
    ii, jj = np.indices(shape)
    img = np.zeros(shape)
    for qx, qy, a in peaks:
        img += a * np.exp(-((ii - qx) ** 2 + (jj - qy) ** 2) / (2 * sigma**2))
    return torch.from_numpy(img[None])


def test_position_loss_measures_the_spot_displacement():
    from distill4d.ml.fcunet.train import position_loss

    truth = [(10.3, 12.0, 1.0), (20.0, 8.6, 0.5), (6.0, 25.2, 0.2)]
    peaks = torch.full((1, 5, 3), float("nan"))
    peaks[0, :3] = torch.tensor(truth)
    peaks[0, 3] = torch.tensor([16.0, 16.0, 0.001])  # too weak to count
    target = _gaussian_spots(truth)
    assert float(position_loss(target, target, peaks)) == 0.0
    # every predicted spot 0.4 px further along qx: squared distance 0.16 px², within 0.02
    moved = [(qx + 0.4, qy, a) for qx, qy, a in truth]
    pred = _gaussian_spots(moved).requires_grad_(True)
    loss = position_loss(pred, target, peaks)
    assert abs(float(loss) - 0.16) < 0.02
    loss.backward()
    assert float(pred.grad.abs().sum()) > 0
    # a spot the prediction misses (window sum < 0.3 of the target's) is left to the MSE
    missed = _gaussian_spots(moved[1:])
    only = position_loss(missed, target, peaks)
    assert abs(float(only) - 0.16) < 0.02
    assert float(position_loss(torch.zeros_like(target), target, peaks)) == 0.0
    with pytest.raises(ValueError, match="peaks must be"):
        position_loss(target, target, peaks[0])
    with pytest.raises(ValueError, match="pred and target"):
        position_loss(target, target[:, :16], peaks)


def test_position_weight_is_validated_and_old_checkpoints_keep_their_key():
    from distill4d.ml.fcunet.train import FCUNetTrainConfig

    with pytest.raises(ValueError, match="position_weight"):
        FCUNetTrainConfig(position_weight=-1.0)
    assert "position_weight" not in FCUNetTrainConfig().schedule_dict()
    assert FCUNetTrainConfig(position_weight=0.01).schedule_dict()["position_weight"] == 0.01


class _SpotModel(torch.nn.Module):
    """Stand-in FCU-Net: returns the pattern itself (``follow``) or always the same fixed image."""

    def __init__(self, follow: bool, fixed: torch.Tensor | None = None):
        super().__init__()
        self.follow, self.fixed = follow, fixed

    def set_mc_dropout(self, on: bool) -> None:
        pass

    def forward(self, pattern, probe):
        return pattern if self.follow else self.fixed.expand_as(pattern)


def test_stretch_response_is_one_for_a_detector_that_follows_and_zero_for_one_that_does_not():
    from distill4d.ml.fcunet.train import stretch_response

    rng = np.random.default_rng(0)
    items = []
    for _ in range(3):
        pk = np.column_stack([rng.uniform(12, 52, 8), rng.uniform(12, 52, 8), rng.uniform(0.2, 1.0, 8)])
        pk = np.vstack([[32.0, 32.0, 1.0], pk])
        padded = np.full((12, 3), np.nan)
        padded[: len(pk)] = pk
        items.append({"pattern": _gaussian_spots(pk, (64, 64), sigma=1.0)[0].float(), "probe": torch.ones(64, 64),
                      "peaks": torch.from_numpy(padded), "n_peaks": torch.tensor(len(pk))})
    full = stretch_response(_SpotModel(True), items, stretch=0.03, batch_size=2)
    for axis in ("qx", "qy"):
        assert abs(full[axis]["slope"] - 1.0) < 0.05, full
        assert full[axis]["peaks"] >= 20 and full[axis]["rms_px"] < 0.1
    frozen = stretch_response(_SpotModel(False, items[0]["pattern"]), items[:1], stretch=0.03)
    assert abs(frozen["qx"]["slope"]) < 0.05 and abs(frozen["qy"]["slope"]) < 0.05, frozen
    with pytest.raises(ValueError, match="stretch"):
        stretch_response(_SpotModel(True), items, stretch=0.0)


class _LastChannel(torch.nn.Module):
    def forward(self, h):
        return h[:, -1:]


def test_stretch_response_with_a_held_input_shows_which_input_places_the_peaks():
    from distill4d.ml.fcunet.model import FCUNet, FCUNetConfig
    from distill4d.ml.fcunet.train import stretch_response

    rng = np.random.default_rng(1)
    delta = torch.zeros(64, 64)
    delta[32, 32] = 1.0  # the cross-correlation with a point probe is the pattern itself
    items = []
    for _ in range(2):
        pk = np.vstack([[32.0, 32.0, 1.0], np.column_stack([rng.uniform(12, 52, 8), rng.uniform(12, 52, 8),
                                                            rng.uniform(0.2, 1.0, 8)])])
        padded = np.full((12, 3), np.nan)
        padded[: len(pk)] = pk
        items.append({"pattern": _gaussian_spots(pk, (64, 64), sigma=1.0)[0].float(), "probe": delta,
                      "peaks": torch.from_numpy(padded), "n_peaks": torch.tensor(len(pk))})
    torch.manual_seed(0)
    model = FCUNet(FCUNetConfig(size=64, filters=2, depth=2, correlation_skip=True))
    model.real = _LastChannel()  # a real block that reads only the correlation input
    x = torch.stack([it["pattern"] for it in items])
    assert torch.equal(model(x, delta.expand_as(x)), model.real(model.head_inputs(x, delta.expand_as(x)))[:, 0])
    only_corr = stretch_response(model, items, stretch=0.03, hold="field")  # the correlation sees the stretch
    only_field = stretch_response(model, items, stretch=0.03, hold="correlation")  # the correlation is frozen
    for axis in ("qx", "qy"):
        assert abs(only_corr[axis]["slope"] - 1.0) < 0.05, only_corr
        assert abs(only_field[axis]["slope"]) < 0.05, only_field
    with pytest.raises(ValueError, match="hold"):
        stretch_response(model, items, hold="probe")
    with pytest.raises(ValueError, match="correlation_skip"):
        stretch_response(FCUNet(FCUNetConfig(size=64, filters=2, depth=2)), items, hold="field")


def test_field_shift_moves_the_fields_by_whole_pixels_and_leaves_the_correlation():
    from distill4d.ml.fcunet.model import FCUNet, FCUNetConfig

    torch.manual_seed(0)
    model = FCUNet(FCUNetConfig(size=32, filters=2, depth=2, out_channels=2, correlation_skip=True)).eval()
    model.set_mc_dropout(False)
    x, p = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
    with torch.no_grad():
        a = model.head_inputs(x, p)
        b = model.head_inputs(x, p, field_shift_px=torch.tensor([[3.0, 0.0], [0.0, -2.0]]))
        half = model.head_inputs(x, p, field_shift_px=torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    f = a.shape[1] - 1  # the last channel is the correlation
    assert torch.allclose(b[0, :f], torch.roll(a[0, :f], 3, dims=-2), atol=1e-5)  # +3 px along qx
    assert torch.allclose(b[1, :f], torch.roll(a[1, :f], -2, dims=-1), atol=1e-5)  # -2 px along qy
    assert torch.equal(b[:, f], a[:, f])
    assert not torch.allclose(half[:, :f], a[:, :f], atol=1e-3)  # a sub-pixel shift changes the fields too
    with pytest.raises(ValueError, match="field_shift_px"):
        model.head_inputs(x, p, field_shift_px=torch.zeros(3, 2))


def test_field_jitter_is_validated_needs_the_correlation_and_trains(tiny_library, tmp_path):
    from distill4d.ml.fcunet.train import FCUNetTrainConfig, train_fcunet

    with pytest.raises(ValueError, match="field_jitter_px"):
        FCUNetTrainConfig(field_jitter_px=-0.5)
    with pytest.raises(ValueError, match="correlation_skip"):
        FCUNetTrainConfig(field_jitter_px=0.5)  # the default model has no correlation input
    assert "field_jitter_px" not in FCUNetTrainConfig().schedule_dict()  # old checkpoints still resume
    skip = FCUNetConfig(size=32, filters=2, depth=2, out_channels=2, real_filters=4, correlation_skip=True)
    a = train_fcunet(tiny_library, tmp_path / "a.pt", _tiny_config(model=skip), device="cpu", log=lambda m: None)
    b = train_fcunet(tiny_library, tmp_path / "b.pt", _tiny_config(model=skip, field_jitter_px=0.5), device="cpu",
                     log=lambda m: None)
    assert a["complete"] and b["complete"]
    assert b["training"]["config"]["field_jitter_px"] == 0.5
    sa, sb = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in sb.values() if v.is_floating_point())
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # the jitter changed what was learned


def test_training_resumes_to_the_same_weights(tiny_library, tmp_path):
    from distill4d.ml.fcunet.train import train_fcunet

    full = train_fcunet(tiny_library, tmp_path / "full.pt", _tiny_config(), device="cpu", log=lambda m: None)
    assert full["complete"] and full["training"]["steps"] == 4
    card = json.loads((tmp_path / "full.json").read_text())
    assert card["input"]["q_pixel_inv_A"] == SMALL["q_pixel_inv_A"] and card["input"]["size_px"] == 32
    assert card["training"]["library_config"]["prototypes"] == ["Cu", "MgO"]
    stretch = card["validation"]["stretch_response"]  # measured on the un-augmented validation entries
    assert stretch["stretch"] == 0.02 and stretch["entries"] >= 1 and set(stretch) >= {"qx", "qy"}
    # stop after the first step (time limit), then resume with the same command
    part = train_fcunet(tiny_library, tmp_path / "res.pt", _tiny_config(max_minutes=1e-9), device="cpu",
                        log=lambda m: None)
    assert part == {"complete": False, "step": 1}
    assert not (tmp_path / "res.pt").exists()
    train_fcunet(tiny_library, tmp_path / "res.pt", _tiny_config(), device="cpu", log=lambda m: None)
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "res.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # existing weights are not overwritten; another configuration does not resume a checkpoint
    with pytest.raises(FileExistsError, match="exists"):
        train_fcunet(tiny_library, tmp_path / "full.pt", _tiny_config(), device="cpu", log=lambda m: None)
    assert not (tmp_path / "res.pt.partial").exists()  # the checkpoint goes once the weights are written
    train_fcunet(tiny_library, tmp_path / "r2.pt", _tiny_config(max_minutes=1e-9), device="cpu", log=lambda m: None)
    with pytest.raises(ValueError, match="another training configuration"):
        train_fcunet(tiny_library, tmp_path / "r2.pt", _tiny_config(lr=1e-4), device="cpu", log=lambda m: None)


def test_training_with_the_position_term_records_it(tiny_library, tmp_path):
    from distill4d.ml.fcunet.train import train_fcunet

    card = train_fcunet(tiny_library, tmp_path / "p.pt", _tiny_config(position_weight=0.01), device="cpu",
                        log=lambda m: None)
    assert card["complete"] and json.dumps(card).count('"position_weight": 0.01') == 1
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_warm_start_begins_from_the_given_weights(tiny_library, tmp_path):
    from distill4d.ml.fcunet.train import train_fcunet

    first = train_fcunet(tiny_library, tmp_path / "a.pt", _tiny_config(), device="cpu", log=lambda m: None)
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    # a learning rate too small to move any weight by 1e-6: the result is the initial weights
    card = train_fcunet(tiny_library, tmp_path / "b.pt", _tiny_config(lr=1e-9, seed=5), init=tmp_path / "a.pt",
                        device="cpu", log=lambda m: None)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    for k in a:
        if a[k].is_floating_point() and "running" not in k:  # batch-norm statistics move with the data
            assert torch.allclose(a[k], b[k], atol=1e-6), k
    # ...whereas the same run from a random start (seed 5) ends elsewhere
    train_fcunet(tiny_library, tmp_path / "c.pt", _tiny_config(lr=1e-9, seed=5), device="cpu", log=lambda m: None)
    c = torch.load(tmp_path / "c.pt", weights_only=True)
    assert max(float((a[k] - c[k]).abs().max()) for k in a if a[k].is_floating_point()) > 1e-2
    init = card["training"]["init"]
    assert init["weights"] == "a.pt" and init["training"]["steps"] == first["training"]["steps"] == 4
    assert len(init["sha256"]) == 64
    # another architecture, or weights without their model card, are refused before any work
    other = _tiny_config(model=FCUNetConfig(size=32, filters=4, depth=2, out_channels=2, real_filters=4))
    with pytest.raises(ValueError, match="same architecture"):
        train_fcunet(tiny_library, tmp_path / "d.pt", other, init=tmp_path / "a.pt", device="cpu")
    (tmp_path / "lone.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="model card"):
        train_fcunet(tiny_library, tmp_path / "e.pt", _tiny_config(), init=tmp_path / "lone.pt", device="cpu")
    assert not (tmp_path / "d.pt.partial").exists() and not (tmp_path / "e.pt.partial").exists()
    # a checkpoint of a warm start is not resumed from another start
    train_fcunet(tiny_library, tmp_path / "f.pt", _tiny_config(max_minutes=1e-9), init=tmp_path / "a.pt",
                 device="cpu", log=lambda m: None)
    with pytest.raises(ValueError, match="another training configuration"):
        train_fcunet(tiny_library, tmp_path / "f.pt", _tiny_config(), device="cpu", log=lambda m: None)


def test_training_refuses_a_library_of_another_size(tiny_library, tmp_path):
    from distill4d.ml.fcunet.train import train_fcunet

    cfg = _tiny_config(model=FCUNetConfig(size=64, filters=2, depth=2, out_channels=2, real_filters=4))
    with pytest.raises(ValueError, match="32\\) px but the model takes 64 x 64"):
        train_fcunet(tiny_library, tmp_path / "x.pt", cfg, device="cpu")


@pytest.mark.e2e
def test_cli_train_and_detect_with_the_trained_weights(tiny_library, tmp_path):
    from distill4d.calibration import Calibration
    from distill4d.cli import main
    from distill4d.datacube import DataCube
    from distill4d.io import write
    from distill4d.simulate.library import Library

    out = tmp_path / "w.pt"
    args = ["train", "fcunet", "--library", str(tiny_library), "--out", str(out), "--filters", "2", "--depth", "2",
            "--batch-size", "2", "--steps", "2", "--loader-workers", "0", "--device", "cpu",
            "--config", str(tmp_path / "cfg.json")]
    (tmp_path / "cfg.json").write_text(json.dumps({"model": {"size": 32, "out_channels": 2, "real_filters": 4},
                                                   "warmup_steps": 1, "val_entries": 2}))
    assert main(args) == 0
    assert out.exists() and out.with_suffix(".json").exists()
    assert main(args) == 1  # refuses to overwrite
    warm = [a if a != str(out) else str(tmp_path / "w2.pt") for a in args] + ["--init", str(out)]
    assert main(warm) == 0
    assert json.loads((tmp_path / "w2.json").read_text())["training"]["init"]["weights"] == "w.pt"
    assert main(warm[:-1] + [str(tmp_path / "absent.pt"), "--force"]) == 1  # a missing start is named, not trained
    gpu_style = [a if a != str(out) else str(tmp_path / "w3.pt") for a in args] + ["--in-memory", "--augment-on", "device"]
    assert main(gpu_style) == 0
    cfg = json.loads((tmp_path / "w3.json").read_text())["training"]["config"]
    assert cfg["in_memory"] is True and cfg["augment_on"] == "device"
    lib = Library(tiny_library)
    e = lib[0]
    dc = DataCube(np.stack([e["pattern"], e["pattern"]])[None], Calibration(q_pixel_inv_A=SMALL["q_pixel_inv_A"]))
    write(tmp_path / "d.h5", dc)
    np.save(tmp_path / "probe.npy", e["probe"])
    rc = main(["disks", str(tmp_path / "d.h5"), "--probe", str(tmp_path / "probe.npy"), "--method", "fcunet",
               "--weights", str(out), "--passes", "2", "-o", str(tmp_path / "p.h5"), "--no-png", "--no-progress"])
    assert rc == 0 and (tmp_path / "p.h5").exists()
    rc = main(["disks", str(tmp_path / "d.h5"), "--probe", str(tmp_path / "probe.npy"), "--method", "fcunet",
               "--weights", str(out), "--views", "flips", "-o", str(tmp_path / "v.h5"), "--no-png", "--no-progress"])
    from distill4d.bragg import BraggPeaks

    assert rc == 0 and BraggPeaks.from_hdf5(tmp_path / "v.h5").params["views"] == "flips"
    rc = main(["disks", str(tmp_path / "d.h5"), "--method", "fcunet", "--weights", str(tmp_path / "none.pt"),
               "-o", str(tmp_path / "q.h5"), "--no-png"])
    assert rc == 1 and not (tmp_path / "q.h5").exists()


# --------------------------------------------------------------------------- the shipped model
def _unseen_crystal_distances(shape: int, q_pixel_inv_A: float):
    """Distances (px) from each strong kinematic disk of Si [011] (absent from training), 20 nm,
    200 kV, 2 mrad, to the nearest FCU-Net peak (shipped weights, the default single pass), and the fraction of
    strong detections that are real disks (within 1 px of a true peak of amplitude >= 0.01)."""
    pytest.importorskip("abtem")
    from distill4d.calibration import Calibration
    from distill4d.datacube import DataCube
    from distill4d.ml.fcunet.detect import find_bragg_disks_fcunet, true_peaks
    from distill4d.simulate.crystals import orient, prototype
    from distill4d.simulate.multislice import CBEDSettings, simulate_cbed

    if not DEFAULT_WEIGHTS.exists():
        pytest.fail(f"the shipped weights {DEFAULT_WEIGHTS} are missing")
    atoms, _ = orient(prototype("Si"), (0, 1, 1))
    settings = CBEDSettings(energy_eV=200e3, semiangle_mrad=2.0, shape=(shape, shape), q_pixel_inv_A=q_pixel_inv_A,
                            thicknesses_A=(200.0,))
    res = simulate_cbed(atoms, settings, device="cpu")
    c = shape // 2
    dc = DataCube(res.patterns[:1][None].astype(np.float32),
                  Calibration(q_pixel_inv_A=q_pixel_inv_A, energy_eV=200e3, semiangle_mrad=2.0, origin_px=(c, c)))
    with pytest.warns(UserWarning, match="preliminary"):
        peaks = find_bragg_disks_fcunet(dc, res.probe, device="cpu", progress=False)
    found = peaks[0, 0]
    # the model sees +-64 of its pixels (0.025 1/Å): score the disks inside that circle, 2 px in
    reach_px = (64 - 2) * 0.025 / q_pixel_inv_A
    truth = true_peaks(res.peaks, (shape, shape), min_amplitude=0.1, edge_px=2.0)
    truth = truth[np.hypot(truth[:, 0] - c, truth[:, 1] - c) <= reach_px]
    assert len(truth) >= 8
    nearest = np.hypot(found[:, None, 0] - truth[None, :, 0], found[:, None, 1] - truth[None, :, 1]).min(axis=0)
    strong = found[found[:, 2] >= 0.1]
    all_true = true_peaks(res.peaks, (shape, shape), min_amplitude=0.01, edge_px=0.0)
    dd = np.hypot(strong[:, None, 0] - all_true[None, :, 0], strong[:, None, 1] - all_true[None, :, 1]).min(axis=1)
    return nearest, float(np.mean(dd < 1.0))


@pytest.mark.parametrize("shape, q_pixel_inv_A", [(128, 0.025), (160, 0.02)])
def test_shipped_weights_locate_the_disks_of_an_unseen_crystal(shape, q_pixel_inv_A):
    """What the preliminary CPU-trained model measurably does (at the model's pixel size and at a
    finer one, resampled; one pass, dropout off): >= 90 % of the strong disks (amplitude >= 0.1)
    within 1 px and >= 60 % within 0.5 px (measured 100 % and 91-100 %; the first shipped weights,
    1400 steps, had 61-70 % and 35-39 % with 4 dropout passes); >= 60 % of the strong predicted
    peaks are real (measured 76 %)."""
    nearest, real = _unseen_crystal_distances(shape, q_pixel_inv_A)
    assert np.mean(nearest < 1.0) >= 0.9, nearest
    assert np.mean(nearest < 0.5) >= 0.6, nearest
    assert real >= 0.6


def test_shipped_weights_find_every_strong_disk_within_half_a_pixel():
    """The issue's goal at the model's own pixel size: all 23 strong disks of the unseen
    crystal within 0.5 px (measured: largest distance 0.45 px)."""
    nearest, _ = _unseen_crystal_distances(128, 0.025)
    assert np.all(nearest < 0.5), nearest


@pytest.mark.xfail(strict=True, reason="issue 5 goal not met yet on a finer detector, resampled onto the model grid "
                   "(91 % of the strong disks within 0.5 px, largest 0.55 px); strict: promote once it passes")
def test_shipped_weights_find_every_strong_disk_within_half_a_pixel_when_resampled():
    nearest, _ = _unseen_crystal_distances(160, 0.02)
    assert np.all(nearest < 0.5), nearest


def test_one_loader_serves_every_epoch_and_resumes_mid_epoch():
    import itertools

    from distill4d.ml.fcunet.train import FCUNetTrainConfig, _batch_keys, _batches

    cfg = FCUNetTrainConfig(batch_size=3, seed=5)
    full = list(itertools.islice(_batch_keys(10, cfg, 0, 0), 7))  # 3 batches per epoch (10 // 3)
    assert [b[0][0] for b in full] == [0, 0, 0, 1, 1, 1, 2]  # the epoch travels with each key
    assert [i for _, i in full[4]] == list(_batches(10, cfg, 1)[1])  # epoch 1 draws its own order
    assert full[3:] == list(itertools.islice(_batch_keys(10, cfg, 1, 0), 4))
    assert full[5:] == list(itertools.islice(_batch_keys(10, cfg, 1, 2), 2))  # resumed at batch 2 of epoch 1
    assert full[3:] == list(itertools.islice(_batch_keys(10, cfg, 0, 3), 4))  # an epoch's end is the next's start


def test_dataset_key_with_epoch_matches_set_epoch(tiny_library):
    from distill4d.simulate.augment import AugmentConfig
    from distill4d.ml.fcunet.data import LibraryDataset

    ds = LibraryDataset(tiny_library, augment=AugmentConfig(), seed=3)
    keyed = ds[(2, 1)]
    ds.set_epoch(2)
    plain = ds[1]
    assert keyed["epoch"] == plain["epoch"] == 2
    assert torch.equal(keyed["pattern"], plain["pattern"])
    ds.set_epoch(0)
    assert not torch.equal(ds[1]["pattern"], plain["pattern"])  # another epoch, another augmentation


def test_device_augmentation_keeps_the_input_scaling_and_moves_peaks_with_the_target():
    from distill4d.simulate.augment import AugmentConfig
    from distill4d.ml.fcunet.train import augment_batch

    truth = [(10.3, 12.0, 1.0), (20.0, 8.6, 0.5), (6.0, 25.2, 0.2)]
    target = _gaussian_spots(truth).float().repeat(4, 1, 1)
    pattern = 0.01 * target
    peaks = torch.full((4, 6, 3), float("nan"))
    peaks[:, :3] = torch.tensor(truth)
    batch = {"pattern": pattern, "probe": torch.ones_like(pattern) * 0.05, "target": target, "peaks": peaks}
    # geometry and gain only: dividing by the gain gives back the resampled pattern
    cfg = AugmentConfig(ellipticity_max=0.05, shift_max_px=2.0, plasmon_fraction=(0, 0), dose_e=None,
                        bad_pixel_probability=0.0, intensity_factor=(0.5, 2.0))
    gen = torch.Generator().manual_seed(1)
    p, probe, t, pk = augment_batch(batch, cfg, gen, torch.device("cpu"))
    assert torch.allclose(p, 0.01 * t, rtol=1e-4, atol=1e-9)  # same resampling, the gain divided out
    assert torch.equal(probe, batch["probe"])
    assert torch.isnan(pk[:, 3:]).all() and torch.equal(pk[:, :3, 2], peaks[:, :3, 2])
    moved = (pk[:, :3, :2] - peaks[:, :3, :2]).norm(dim=-1)
    assert float(moved.max()) > 0.3  # the shifts and stretches did move them
    # each moved peak sits at the centroid of the moved target spot (within 0.1 px)
    ii, jj = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for b in range(4):
        for j in range(3):
            x, y = pk[b, j, :2].tolist()
            w = t[b] * ((ii - x) ** 2 + (jj - y) ** 2 < 2.5**2)
            c = torch.stack([(w * ii).sum(), (w * jj).sum()]) / w.sum()
            assert float((c - pk[b, j, :2]).norm()) < 0.1, (b, j)
    # with Poisson noise at a high dose the pattern keeps its total in input units (within 1 %)
    noisy = AugmentConfig(ellipticity_max=0.0, shift_max_px=0.0, plasmon_fraction=(0, 0), dose_e=(1e6, 1e6),
                          noise_probability=1.0, bad_pixel_probability=0.0)
    p2, *_ = augment_batch(batch, noisy, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert torch.allclose(p2.sum(dim=(1, 2)), pattern.sum(dim=(1, 2)), rtol=0.01)
    assert not torch.allclose(p2, pattern, atol=1e-6)  # it is noisy


def test_training_with_device_augmentation_resumes_to_the_same_weights(tiny_library, tmp_path):
    from distill4d.ml.fcunet.train import FCUNetTrainConfig, train_fcunet

    with pytest.raises(ValueError, match="augment_on"):
        FCUNetTrainConfig(augment_on="gpu")
    kw = dict(augment_on="device", position_weight=0.01)
    full = train_fcunet(tiny_library, tmp_path / "full.pt", _tiny_config(**kw), device="cpu", log=lambda m: None)
    assert full["complete"] and full["training"]["config"]["augment_on"] == "device"
    assert train_fcunet(tiny_library, tmp_path / "res.pt", _tiny_config(max_minutes=1e-9, **kw), device="cpu",
                        log=lambda m: None) == {"complete": False, "step": 1}
    train_fcunet(tiny_library, tmp_path / "res.pt", _tiny_config(**kw), device="cpu", log=lambda m: None)
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "res.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    loader = train_fcunet(tiny_library, tmp_path / "l.pt", _tiny_config(position_weight=0.01), device="cpu",
                          log=lambda m: None)
    c = torch.load(tmp_path / "l.pt", weights_only=True)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # other draws than the loader's
    assert loader["training"]["config"]["augment_on"] == "loader"


def test_in_memory_dataset_gives_the_items_read_from_the_files(tiny_library):
    from distill4d.simulate.augment import AugmentConfig
    from distill4d.ml.fcunet.data import LibraryDataset

    idx = [3, 0, 5]
    files = LibraryDataset(tiny_library, indices=idx, augment=AugmentConfig(), seed=1)
    memory = LibraryDataset(tiny_library, indices=idx, augment=AugmentConfig(), seed=1, in_memory=True)
    for i in range(len(idx)):
        a, b = files[(1, i)], memory[(1, i)]
        for k in ("pattern", "probe", "target", "peaks"):
            assert torch.equal(torch.nan_to_num(a[k], nan=-1.0), torch.nan_to_num(b[k], nan=-1.0)), (i, k)
        assert a["n_peaks"] == b["n_peaks"] > 0 and a["index"] == b["index"] == idx[i]


def test_map_points_names_wrong_shapes():
    from distill4d.simulate.augment_torch import map_points

    pts = torch.tensor([[[10.0, 12.0, 1.0], [float("nan")] * 3]])
    eye, zero = torch.eye(2)[None], torch.zeros(1, 2)
    moved = map_points(pts, 1.1 * eye, torch.tensor([[0.5, 0.0]]), torch.tensor([[8.0, 8.0]]))
    assert torch.allclose(moved[0, 0], torch.tensor([8 + 1.1 * 2 + 0.5, 8 + 1.1 * 4, 1.0]))
    assert torch.isnan(moved[0, 1]).all()
    with pytest.raises(ValueError, match="points must be"):
        map_points(pts[0], eye, zero, zero)
    with pytest.raises(ValueError, match="matrix must be"):
        map_points(pts, torch.eye(2), zero, zero)


def test_affine_maps_padded_peaks_as_it_maps_each_list_entry():
    from distill4d.simulate.augment_torch import affine

    pats = torch.rand(2, 16, 16)
    rows = [torch.tensor([[3.0, 4.0, 1.0], [9.5, 2.25, 0.5]]), torch.tensor([[7.0, 7.0, 0.2]])]
    padded = torch.full((2, 3, 3), float("nan"))
    padded[0, :2], padded[1, :1] = rows[0], rows[1]
    m = torch.tensor([[[1.02, 0.01], [0.01, 0.99]], [[0.97, 0.0], [0.0, 1.03]]])
    shift = torch.tensor([[0.5, -1.0], [1.5, 0.25]])
    _, _, as_list = affine(pats, None, rows, matrix=m, shift_px=shift)
    _, _, as_padded = affine(pats, None, padded, matrix=m, shift_px=shift)
    assert torch.allclose(as_padded[0, :2], as_list[0]) and torch.allclose(as_padded[1, :1], as_list[1])
    assert torch.isnan(as_padded[0, 2]).all() and torch.isnan(as_padded[1, 1:]).all()
    with pytest.raises(ValueError, match="padded peaks must have shape"):
        affine(pats, None, padded[:1], matrix=m, shift_px=shift)
    half = padded.clone()
    half[0, 2, 0] = 1.0  # qx given, qy NaN: neither a peak nor padding
    with pytest.raises(ValueError, match="NaN in both"):
        affine(pats, None, half, matrix=m, shift_px=shift)


def test_shipped_weights_with_flips_give_mirrored_peaks_for_a_mirrored_pattern():
    """views='flips': the peaks of a pattern mirrored about the direct beam are the mirrored peaks
    (within 0.02 px; measured 0.008), which the single view does not guarantee (0.25 px with the
    shipped weights); an unknown view is named."""
    from distill4d.calibration import Calibration
    from distill4d.datacube import DataCube
    from distill4d.ml.fcunet.detect import find_bragg_disks_fcunet
    from distill4d.simulate.kinematic import kinematic_patterns, vacuum_probe

    F = np.array([[1.01, 0.004], [-0.003, 0.995]])  # a deformed, unsymmetric pattern
    pat = kinematic_patterns(F, shape=(128, 128))[0][0]
    mirrored = np.roll(pat[::-1], 1, axis=0)  # qx -> 128 - qx about the direct beam at 64
    cal = Calibration(q_pixel_inv_A=0.025, energy_eV=300e3, semiangle_mrad=2.0, origin_px=(64, 64))
    dc = DataCube(np.stack([pat, mirrored])[None].astype(np.float32), cal)
    probe = vacuum_probe((128, 128))
    with pytest.warns(UserWarning, match="preliminary"):
        bp = find_bragg_disks_fcunet(dc, probe, views="flips", device="cpu", progress=False)
    a, b = bp[0, 0], bp[0, 1]
    strong = a[a[:, 2] > 0.1]
    assert len(strong) >= 8
    back = np.column_stack([128 - b[:, 0], b[:, 1]])
    d = np.hypot(strong[:, None, 0] - back[None, :, 0], strong[:, None, 1] - back[None, :, 1]).min(axis=1)
    assert np.all(d < 0.02), d
    with pytest.raises(ValueError, match="views must be one of"):
        find_bragg_disks_fcunet(dc, probe, views="rotations", device="cpu", progress=False)


@pytest.mark.slow
def test_fcunet_as_judge_with_rim_refinement_refines_its_positions():
    """refine="rim": the network says which disks exist, the rim fit places them (on even disks
    within 0.1 px of the known centres); a bad refine is refused before any work."""
    from _synth import LATTICE_PROBE, lattice_points, uneven_disks
    from distill4d.datacube import DataCube
    from distill4d.errors import Distill4dError
    from distill4d.ml.fcunet.detect import find_bragg_disks_fcunet

    with pytest.raises(Distill4dError, match="refine"):
        find_bragg_disks_fcunet(np.zeros((4, 4)), refine="circle")
    pts = lattice_points()
    dc = DataCube(uneven_disks(pts)[None, None])
    kw = dict(device="cpu", progress=False, q_pixel_inv_A=0.025)
    plain = find_bragg_disks_fcunet(dc, LATTICE_PROBE, **kw)
    refined = find_bragg_disks_fcunet(dc, LATTICE_PROBE, refine="rim", **kw)
    assert refined.params["refine"] == "rim" and "rim" in refined.params
    assert plain.n_peaks == refined.n_peaks > 0
    p = refined[0, 0]
    d = np.hypot(p[:, 0, None] - pts[None, :, 0], p[:, 1, None] - pts[None, :, 1]).min(axis=1)
    assert np.median(d) < 0.1
