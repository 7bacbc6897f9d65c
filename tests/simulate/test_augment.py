"""Augmentation of simulated training samples: geometry, noise statistics, background, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from distill4d.simulate import augment as aug

N = 64
ORIGIN = np.array([32.0, 32.0])  # the default (Qx // 2, Qy // 2)
PEAKS = np.array(
    [
        [20.3, 18.6, 1.0],
        [44.7, 21.2, 0.8],
        [31.4, 45.9, 0.6],
        [18.2, 44.1, 0.9],
        [46.1, 42.8, 0.7],
        [32.0, 32.0, 2.0],
    ]
)
RATIO, ANGLE, SHIFT = 1.05, math.radians(30.0), (1.3, -0.7)


def gaussians(peaks: np.ndarray, sigma: float, shape: tuple[int, int] = (N, N)) -> np.ndarray:
    qx, qy = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape)
    for x, y, a in peaks:
        out += a * np.exp(-((qx - x) ** 2 + (qy - y) ** 2) / (2 * sigma**2))
    return out


def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return 100.0 * gaussians(PEAKS, 1.5), gaussians(PEAKS, 1.0), PEAKS.copy()


def centroids(img: np.ndarray, at: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid in a (2 radius + 1)^2 window around each position of ``at``."""
    out = []
    for x, y in at[:, :2]:
        i, j = round(x), round(y)
        win = img[i - radius : i + radius + 1, j - radius : j + radius + 1]
        gx, gy = np.mgrid[i - radius : i + radius + 1, j - radius : j + radius + 1]
        out.append([(win * gx).sum() / win.sum(), (win * gy).sum() / win.sum()])
    return np.array(out)


def expected_map(peaks: np.ndarray, ratio: float, angle: float, shift_px=(0.0, 0.0)) -> np.ndarray:
    """p' = o + D (p - o) + s with D the stretch by ratio along (cos, sin): written out independently."""
    u = np.array([math.cos(angle), math.sin(angle)])
    d = peaks[:, :2] - ORIGIN
    along = d @ u
    return ORIGIN + d + (ratio - 1) * along[:, None] * u + np.asarray(shift_px)


def soft_disk(center, radius, shape=(N, N)) -> np.ndarray:
    qx, qy = np.indices(shape, dtype=np.float64)
    return np.clip(radius - np.hypot(qx - center[0], qy - center[1]) + 0.5, 0.0, 1.0)


# ------------------------------------------------------------------------------------------
# geometry (NumPy)


def test_ellipse_matrix_is_a_stretch_along_the_angle():
    D = aug.ellipse_matrix(RATIO, ANGLE)
    u = np.array([math.cos(ANGLE), math.sin(ANGLE)])
    v = np.array([-u[1], u[0]])
    np.testing.assert_allclose(D @ u, RATIO * u, atol=1e-14)
    np.testing.assert_allclose(D @ v, v, atol=1e-14)
    assert np.linalg.det(D) == pytest.approx(RATIO, rel=1e-12)


@pytest.mark.parametrize("order", [1, 3])
def test_distortion_then_shift_moves_image_centroids_with_the_peak_list(order):
    pattern, target, peaks = sample()
    original = (pattern.copy(), target.copy(), peaks.copy())
    p, t, q = aug.elliptic_distortion(pattern, target, peaks, ratio=RATIO, angle_rad=ANGLE, order=order)
    p, t, q = aug.shift(p, t, q, shift_px=SHIFT, order=order)
    want = expected_map(PEAKS, RATIO, ANGLE, SHIFT)
    np.testing.assert_allclose(q[:, :2], want, atol=1e-12)
    np.testing.assert_array_equal(q[:, 2], PEAKS[:, 2])  # amplitudes carried unchanged
    # the transform moves outer peaks by ~1-2 px, so a wrong convention fails by far
    assert np.abs(want - PEAKS[:, :2]).max() > 1.0
    assert np.abs(centroids(p, want) - want).max() < 0.1
    assert np.abs(centroids(t, want) - want).max() < 0.1
    for a, b in zip(original, (pattern, target, peaks)):
        np.testing.assert_array_equal(a, b)  # inputs untouched


def test_affine_in_one_step_equals_distortion_then_shift_for_bilinear_peaks():
    pattern, target, peaks = sample()
    _, t1, q1 = aug.affine(pattern, target, peaks, matrix=aug.ellipse_matrix(RATIO, ANGLE), shift_px=SHIFT)
    np.testing.assert_allclose(q1[:, :2], expected_map(PEAKS, RATIO, ANGLE, SHIFT), atol=1e-12)
    assert np.abs(centroids(t1, q1) - q1[:, :2]).max() < 0.1


def test_shift_is_sum_and_centroid_exact_and_keeps_float32():
    pattern, _, _ = sample()
    p, _, _ = aug.shift(pattern.astype(np.float32), shift_px=SHIFT)
    assert p.dtype == np.float32
    assert p.sum() == pytest.approx(pattern.sum(), rel=1e-5)
    c0 = np.array([(pattern * g).sum() / pattern.sum() for g in np.indices(pattern.shape)])
    c1 = np.array([(p * g).sum() / p.sum() for g in np.indices(p.shape)])
    np.testing.assert_allclose(c1 - c0, SHIFT, atol=1e-4)


def test_distortion_grows_the_total_by_the_ratio():
    pattern, _, _ = sample()
    p, _, _ = aug.elliptic_distortion(pattern, ratio=RATIO, angle_rad=ANGLE)
    assert p.sum() / pattern.sum() == pytest.approx(RATIO, rel=2e-3)


# ------------------------------------------------------------------------------------------
# noise, background, bad pixels (NumPy)


def test_poisson_noise_mean_total_and_seeding():
    lam_img = soft_disk((8.0, 8.0), 5.0, (16, 16)) + 0.2
    dose = 5000.0
    lam = lam_img * dose / lam_img.sum()
    rng = np.random.default_rng(1)
    draws = np.stack([aug.poisson_noise(lam_img, dose_e=dose, rng=rng) for _ in range(400)])
    assert draws.dtype == np.float64 and np.all(draws == np.round(draws))
    mean = draws.mean(axis=0)
    z = (mean - lam) / np.sqrt(lam / len(draws))
    assert np.abs(z).max() < 5.0  # 256 pixels, 5 sigma
    assert np.mean(z**2) == pytest.approx(1.0, abs=0.3)  # variance = mean (Poisson), not just the mean
    totals = draws.sum(axis=(1, 2))
    assert np.abs(totals - dose).max() < 5 * math.sqrt(dose)
    assert totals.std() == pytest.approx(math.sqrt(dose), rel=0.2)
    a = aug.poisson_noise(lam_img, dose_e=dose, rng=np.random.default_rng(7))
    b = aug.poisson_noise(lam_img, dose_e=dose, rng=np.random.default_rng(7))
    c = aug.poisson_noise(lam_img, dose_e=dose, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_plasmon_background_total_smooth_centred_lorentzian_tail():
    pattern, _, _ = sample()
    probe = soft_disk(ORIGIN, 5.0)
    out = aug.plasmon_background(pattern, probe, fraction=0.2, width_px=2.0)
    bg = out - pattern
    assert bg.sum() == pytest.approx(0.2 * pattern.sum(), rel=1e-6)
    assert bg.min() >= 0
    c = np.array([(bg * g).sum() / bg.sum() for g in np.indices(bg.shape)])
    assert np.abs(c - ORIGIN).max() < 0.5
    # smooth: no pixel-scale structure although the probe has a sharp edge
    lap = np.abs(bg[1:-1, 1:-1] * 4 - bg[2:, 1:-1] - bg[:-2, 1:-1] - bg[1:-1, 2:] - bg[1:-1, :-2])
    lap_probe = np.abs(probe[1:-1, 1:-1] * 4 - probe[2:, 1:-1] - probe[:-2, 1:-1] - probe[1:-1, 2:] - probe[1:-1, :-2])
    assert lap.max() / bg.max() < 0.1 < lap_probe.max() / probe.max()
    # far from the probe the halo falls off like the Lorentzian tail, ~ q^-2
    r1, r2 = 14, 28
    slope = math.log(bg[32 + r2, 32] / bg[32 + r1, 32]) / math.log(r2 / r1)
    assert slope == pytest.approx(-2.0, abs=0.35)
    # fraction 0 leaves the pattern unchanged
    np.testing.assert_array_equal(aug.plasmon_background(pattern, probe, fraction=0.0, width_px=2.0), pattern)


def test_bad_pixel_fractions_masks_and_values():
    pattern, _, _ = sample()
    hot_f, dead_f = 0.05, 0.1
    out, hot, dead = aug.bad_pixels(pattern, hot_fraction=hot_f, dead_fraction=dead_f, rng=np.random.default_rng(3))
    n = pattern.size
    for mask, f in ((hot, hot_f), (dead, dead_f)):
        assert abs(mask.sum() - f * n) < 4 * math.sqrt(n * f * (1 - f))
    assert not np.any(hot & dead)
    assert np.all(out[dead] == 0)
    assert np.all(out[hot] == 10 * pattern.max())
    np.testing.assert_array_equal(out[~(hot | dead)], pattern[~(hot | dead)])
    out2, _, _ = aug.bad_pixels(pattern, hot_fraction=0.01, dead_fraction=0, hot_value=7.0, rng=np.random.default_rng(3))
    assert set(np.unique(out2[out2 != pattern])) == {7.0}


def test_intensity_scale():
    pattern, _, _ = sample()
    np.testing.assert_allclose(aug.intensity_scale(pattern, factor=2.5), 2.5 * pattern, rtol=1e-15)


# ------------------------------------------------------------------------------------------
# random chain (NumPy)


def _assert_same(a, b):
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        if isinstance(a[3][k], np.ndarray):
            np.testing.assert_array_equal(a[3][k], b[3][k])
        else:
            assert a[3][k] == b[3][k], k


def test_random_augment_is_reproducible_and_seed_dependent():
    pattern, target, peaks = sample()
    probe = soft_disk(ORIGIN, 5.0)
    cfg = aug.AugmentConfig(bad_pixel_probability=1.0, hot_fraction_max=0.01, dead_fraction_max=0.01, noise_probability=1.0)
    a = aug.random_augment(pattern, target, peaks, probe, rng=np.random.default_rng(11), config=cfg)
    b = aug.random_augment(pattern, target, peaks, probe, rng=np.random.default_rng(11), config=cfg)
    c = aug.random_augment(pattern, target, peaks, probe, rng=np.random.default_rng(12), config=cfg)
    _assert_same(a, b)
    assert not np.array_equal(a[0], c[0]) and a[3]["ratio"] != c[3]["ratio"]
    prm = a[3]
    assert 1.0 <= prm["ratio"] <= 1.03 and 0 <= prm["angle_rad"] < math.pi
    assert max(abs(s) for s in prm["shift_px"]) <= 2.0
    assert 1e2 <= prm["dose_e"] <= 1e6 and 0 <= prm["plasmon_fraction"] <= 0.3
    assert a[0].dtype == np.float64 and np.all(a[0][prm["dead_mask"]] == 0)


def test_random_augment_geometry_matches_target_and_recorded_params():
    pattern, target, peaks = sample()
    probe = soft_disk(ORIGIN, 5.0)
    clean = aug.AugmentConfig(ellipticity_max=0.05, dose_e=None, bad_pixel_probability=0.0, intensity_factor=(1, 1))
    for seed in range(4):
        p, t, q, prm = aug.random_augment(pattern, target, peaks, probe, rng=np.random.default_rng(seed), config=clean)
        assert np.abs(centroids(t, q) - q[:, :2]).max() < 0.15
        want = expected_map(PEAKS, prm["ratio"], prm["angle_rad"], prm["shift_px"])
        np.testing.assert_allclose(q[:, :2], want, atol=1e-12)
        # the pattern is the recorded background + geometry, nothing else
        ref = aug.plasmon_background(pattern, probe, fraction=prm["plasmon_fraction"], width_px=prm["plasmon_width_px"])
        ref, _, _ = aug.affine(ref, matrix=aug.ellipse_matrix(prm["ratio"], prm["angle_rad"]), shift_px=prm["shift_px"])
        np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-12)
    assert prm["dose_e"] is None and prm["count_scale"] == 1.0 and not prm["hot_mask"].any()


def test_augment_config_defaults_and_validation():
    cfg = aug.AugmentConfig()
    assert cfg.ellipticity_max == 0.03 and cfg.shift_max_px == 2.0 and cfg.dose_e == (1e2, 1e6)
    with pytest.raises(dataclasses_frozen_error()):
        cfg.shift_max_px = 3.0  # type: ignore[misc]
    for kwargs, name in [
        ({"shift_max_px": -1.0}, "shift_max_px"),
        ({"dose_e": (1e3, 1e2)}, "dose_e"),
        ({"dose_e": (0.0, 1e2)}, "dose_e"),
        ({"noise_probability": 1.5}, "noise_probability"),
        ({"plasmon_width_px": (0.0, 1.0)}, "plasmon_width_px"),
        ({"order": 2}, "order"),
    ]:
        with pytest.raises(ValueError, match=name):
            aug.AugmentConfig(**kwargs)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda p, t, q: aug.poisson_noise(p, dose_e=-5.0, rng=np.random.default_rng(0)), "dose_e"),
        (lambda p, t, q: aug.poisson_noise(np.zeros_like(p), dose_e=5.0, rng=np.random.default_rng(0)), "pattern"),
        (lambda p, t, q: aug.elliptic_distortion(p, t, q, ratio=0.0, angle_rad=0.0), "ratio"),
        (lambda p, t, q: aug.elliptic_distortion(p, t, q, ratio=-1.02, angle_rad=0.0), "ratio"),
        (lambda p, t, q: aug.shift(p, t[:-1], q, shift_px=(1, 1)), "target"),
        (lambda p, t, q: aug.shift(np.where(p > 50, np.nan, p), t, q, shift_px=(1, 1)), "pattern"),
        (lambda p, t, q: aug.shift(p, t, q[:, :1], shift_px=(1, 1)), "peaks"),
        (lambda p, t, q: aug.shift(p, t, q, shift_px=(1, np.inf)), "shift_px"),
        (lambda p, t, q: aug.plasmon_background(p, p[:-1], fraction=0.1, width_px=1), "probe"),
        (lambda p, t, q: aug.bad_pixels(p, hot_fraction=0.6, dead_fraction=0.6, rng=np.random.default_rng(0)), "hot_fraction"),
        (lambda p, t, q: aug.random_augment(p, t[:, :-1], q, None, rng=np.random.default_rng(0)), "target"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call(*sample())


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="rng"):
        aug.poisson_noise(np.ones((4, 4)), dose_e=10, rng=0)  # type: ignore[arg-type]


def test_numpy_module_does_not_import_torch():
    code = "import sys, distill4d.simulate.augment; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------
# torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def T(torch):
    from distill4d.simulate import augment_torch

    return augment_torch


def test_torch_geometry_centroids_and_agreement_with_numpy(torch, T):
    pattern, target, peaks = sample()
    params = [(RATIO, ANGLE, SHIFT), (1.02, 2.0, (-1.7, 0.4)), (1.0, 0.0, (0.0, 0.0))]
    B = len(params)
    D = torch.tensor(np.stack([aug.ellipse_matrix(r, a) for r, a, _ in params]))
    shifts = torch.tensor([s for _, _, s in params])
    pats = torch.tensor(np.stack([pattern] * B), dtype=torch.float32)
    tgts = torch.tensor(np.stack([target] * B), dtype=torch.float32)
    pk = [torch.tensor(peaks, dtype=torch.float32) for _ in range(B)]
    # ellipse matrix of the torch module agrees with the NumPy one
    f64 = torch.float64
    Dt = T.ellipse_matrix(torch.tensor([r for r, _, _ in params], dtype=f64), torch.tensor([a for _, a, _ in params], dtype=f64))
    np.testing.assert_allclose(Dt.numpy(), D.numpy(), atol=1e-14)
    P, Tg, Q = T.affine(pats, tgts, pk, matrix=Dt, shift_px=shifts)
    assert P.dtype == torch.float32 and Q[0].dtype == torch.float32
    for i, (r, a, s) in enumerate(params):
        want = expected_map(PEAKS, r, a, s)
        assert np.abs(Q[i][:, :2].numpy() - want).max() < 1e-5
        assert np.abs(centroids(P[i].numpy(), want) - want).max() < 0.1
        assert np.abs(centroids(Tg[i].numpy(), want) - want).max() < 0.1
        p, t, q = aug.affine(pattern, target, peaks, matrix=aug.ellipse_matrix(r, a), shift_px=s)
        np.testing.assert_allclose(P[i].numpy(), p, atol=1e-4 * p.max())
        np.testing.assert_allclose(Tg[i].numpy(), t, atol=1e-4 * t.max())
        np.testing.assert_allclose(Q[i].numpy(), q, atol=1e-5)
    # the two-step API: distortion then shift, in float64
    p64 = torch.tensor(np.stack([pattern]))
    P2, _, Q2 = T.elliptic_distortion(p64, None, [torch.tensor(peaks)], ratio=RATIO, angle_rad=ANGLE)
    P2, _, Q2 = T.shift(P2, None, Q2, shift_px=SHIFT)
    p, _, q = aug.elliptic_distortion(pattern, None, peaks, ratio=RATIO, angle_rad=ANGLE)
    p, _, q = aug.shift(p, None, q, shift_px=SHIFT)
    np.testing.assert_allclose(P2[0].numpy(), p, atol=1e-10)
    np.testing.assert_allclose(Q2[0].numpy(), q, atol=1e-10)


def test_torch_plasmon_poisson_bad_pixels_scale(torch, T):
    pattern, _, _ = sample()
    probe = soft_disk(ORIGIN, 5.0)
    pats = torch.tensor(np.stack([pattern, 2 * pattern]))
    frac, width = torch.tensor([0.2, 0.05]), torch.tensor([2.0, 4.0])
    out = T.plasmon_background(pats, torch.tensor(probe), fraction=frac, width_px=width)
    for i in range(2):
        ref = aug.plasmon_background(pats[i].numpy(), probe, fraction=float(frac[i]), width_px=float(width[i]))
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-10)
        assert float((out[i] - pats[i]).sum()) == pytest.approx(float(frac[i]) * float(pats[i].sum()), rel=1e-6)

    dose = torch.tensor([1e3, 1e5])
    g = torch.Generator().manual_seed(5)
    draws = torch.stack([T.poisson_noise(pats, dose_e=dose, generator=g) for _ in range(100)])
    lam = pats * (dose / pats.sum(dim=(1, 2)))[:, None, None]
    z = (draws.mean(0) - lam) / torch.sqrt(lam / 100).clamp_min(1e-12)
    assert int((lam > 1).sum()) > 50 and float(z[lam > 1].abs().max()) < 5.0
    totals = draws.sum(dim=(2, 3))
    assert float(((totals - dose) / dose.sqrt()).abs().max()) < 5
    a = T.poisson_noise(pats, dose_e=dose, generator=torch.Generator().manual_seed(1))
    b = T.poisson_noise(pats, dose_e=dose, generator=torch.Generator().manual_seed(1))
    c = T.poisson_noise(pats, dose_e=dose, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)

    outb, hot, dead = T.bad_pixels(
        pats, hot_fraction=torch.tensor([0.05, 0.0]), dead_fraction=0.1, generator=torch.Generator().manual_seed(3)
    )
    n = N * N
    assert abs(int(hot[0].sum()) - 0.05 * n) < 4 * math.sqrt(n * 0.05 * 0.95) and int(hot[1].sum()) == 0
    assert all(abs(int(dead[i].sum()) - 0.1 * n) < 4 * math.sqrt(n * 0.1 * 0.9) for i in range(2))
    assert not bool((hot & dead).any()) and bool((outb[dead] == 0).all())
    assert bool((outb[0][hot[0]] == 10 * pats[0].max()).all())
    torch.testing.assert_close(T.intensity_scale(pats, factor=torch.tensor([2.0, 0.5])), pats * torch.tensor([2.0, 0.5])[:, None, None])


def test_torch_random_augment_reproducible_and_consistent(torch, T):
    pattern, target, peaks = sample()
    B = 3
    pats = torch.tensor(np.stack([pattern] * B), dtype=torch.float32)
    tgts = torch.tensor(np.stack([target] * B), dtype=torch.float32)
    pk = [torch.tensor(peaks) for _ in range(B)]
    probe = torch.tensor(soft_disk(ORIGIN, 5.0))
    cfg = aug.AugmentConfig(bad_pixel_probability=1.0, noise_probability=1.0)
    a = T.random_augment(pats, tgts, pk, probe, torch.Generator().manual_seed(4), cfg)
    b = T.random_augment(pats, tgts, pk, probe, torch.Generator().manual_seed(4), cfg)
    c = T.random_augment(pats, tgts, pk, probe, torch.Generator().manual_seed(5), cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(x, y) for x, y in zip(a[2], b[2]))
    assert all(torch.equal(a[3][k], b[3][k]) for k in a[3])
    assert not torch.equal(a[0], c[0])
    assert len(set(a[3]["ratio"].tolist())) == B  # per-sample parameters
    assert bool(torch.isfinite(a[3]["dose_e"]).all()) and bool((a[0][a[3]["dead_mask"]] == 0).all())

    clean = aug.AugmentConfig(ellipticity_max=0.05, dose_e=None, bad_pixel_probability=0.0, intensity_factor=(1, 1))
    _, Tg, Q, prm = T.random_augment(pats, tgts, pk, probe, torch.Generator().manual_seed(6), clean)
    for i in range(B):
        q = Q[i].numpy()
        want = expected_map(PEAKS, float(prm["ratio"][i]), float(prm["angle_rad"][i]), prm["shift_px"][i].numpy())
        np.testing.assert_allclose(q[:, :2], want, atol=1e-10)
        assert np.abs(centroids(Tg[i].numpy(), q) - q[:, :2]).max() < 0.15
    assert bool(torch.isnan(prm["dose_e"]).all()) and not bool(prm["hot_mask"].any())


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda T, t, p: T.poisson_noise(p, dose_e=-1.0, generator=t.Generator()), "dose_e"),
        (lambda T, t, p: T.elliptic_distortion(p, ratio=0.0, angle_rad=0.0), "ratio"),
        (lambda T, t, p: T.shift(p, p[:, :-1], shift_px=(1, 1)), "targets"),
        (lambda T, t, p: T.shift(p.masked_fill(p > 50, float("nan")), shift_px=(1, 1)), "patterns"),
        (lambda T, t, p: T.shift(p[0], shift_px=(1, 1)), "patterns"),
        (lambda T, t, p: T.shift(p, None, [None], shift_px=(1, 1)), "peaks"),
        (lambda T, t, p: T.random_augment(p, None, None, None, t.Generator(), aug.AugmentConfig(order=3)), "order"),
    ],
)
def test_torch_bad_input_raises_value_error_naming_the_argument(torch, T, call, name):
    pats = torch.tensor(np.stack([sample()[0]] * 2))
    with pytest.raises(ValueError, match=name):
        call(T, torch, pats)
