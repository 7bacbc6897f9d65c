"""Tests of distill4d.identify.encode: invariances, scale behaviour, bad input."""


import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.identify.encode import (
    N_FEATURES,
    SCALE_INDEX,
    encode_batch,
    encode_peaks,
    encode_ragged,
    encode_spots,
    shape_features,
)


def _hex_spots(a_inv: float = 0.4, n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    b1 = np.array([a_inv, 0.0])
    b2 = a_inv * np.array([0.5, np.sqrt(3) / 2])
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    g = h.ravel()[:, None] * b1 + k.ravel()[:, None] * b2
    inten = rng.uniform(0.1, 1.0, len(g)) * np.exp(-np.hypot(*g.T))
    inten[np.all(g == 0, axis=1)] = 50.0  # the direct beam
    return g[:, 0], g[:, 1], inten


def test_feature_length_and_direct_beam_dropped():
    qx, qy, it = _hex_spots()
    f = encode_spots(qx, qy, it)
    assert f.shape == (N_FEATURES,)
    assert np.all(np.isfinite(f))
    assert f[SCALE_INDEX] == pytest.approx(0.4)
    # a different direct-beam intensity changes nothing
    it2 = it.copy()
    it2[np.hypot(qx, qy) == 0] = 1e6
    np.testing.assert_allclose(encode_spots(qx, qy, it2), f)


@pytest.mark.parametrize("angle_deg", [17.0, 90.0, 133.3])
def test_rotation_invariance(angle_deg):
    qx, qy, it = _hex_spots()
    t = np.radians(angle_deg)
    rx, ry = np.cos(t) * qx - np.sin(t) * qy, np.sin(t) * qx + np.cos(t) * qy
    np.testing.assert_allclose(encode_spots(rx, ry, it), encode_spots(qx, qy, it), atol=1e-6)


def test_mirror_and_order_invariance():
    qx, qy, it = _hex_spots(seed=3)
    f = encode_spots(qx, qy, it)
    np.testing.assert_allclose(encode_spots(qx, -qy, it), f, atol=1e-6)
    perm = np.random.default_rng(1).permutation(len(qx))
    np.testing.assert_allclose(encode_spots(qx[perm], qy[perm], it[perm]), f, atol=1e-6)


def test_calibration_error_moves_only_the_scale():
    qx, qy, it = _hex_spots()
    f = encode_spots(qx, qy, it)
    f2 = encode_spots(1.02 * qx, 1.02 * qy, it)
    np.testing.assert_allclose(shape_features(f2), shape_features(f), atol=1e-6)
    assert f2[SCALE_INDEX] == pytest.approx(1.02 * f[SCALE_INDEX])


def test_batch_matches_single_and_padding():
    # lists of different lengths, not in order of length: the encoders work in blocks of similar
    # length, each trimmed to its longest list, and must put every row back in its place
    pats = [_hex_spots(a, n=n, seed=s) for s, (a, n) in enumerate([(0.3, 4), (0.4, 2), (0.55, 3), (0.35, 1)])]
    K = max(len(p[0]) for p in pats) + 5
    P = len(pats)
    qx, qy, it = (np.full((P, K), np.nan) for _ in range(3))
    counts = np.array([len(p[0]) for p in pats])
    for i, p in enumerate(pats):
        qx[i, : counts[i]], qy[i, : counts[i]], it[i, : counts[i]] = p
    X = encode_batch(qx, qy, it, counts, chunk=2)
    flat = [np.concatenate([p[c] for p in pats]) for c in range(3)]
    R = encode_ragged(*flat, counts, chunk=2)
    for i, p in enumerate(pats):
        np.testing.assert_allclose(X[i], encode_spots(*p), atol=1e-9)
        np.testing.assert_allclose(R[i], X[i], atol=1e-12)
    assert len({round(float(x), 6) for x in X[:, SCALE_INDEX]}) == len(pats)  # four different patterns


def test_bad_input():
    qx, qy, it = _hex_spots()
    bad = qx.copy()
    bad[3] = np.nan
    with pytest.raises(Distill4dError, match="NaN"):
        encode_spots(bad, qy, it)
    with pytest.raises(Distill4dError, match="no spots"):
        encode_spots([], [], [])
    with pytest.raises(Distill4dError, match="no spot left"):
        encode_spots([0.0, 0.01], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(Distill4dError, match="1D arrays"):
        encode_spots(qx[:, None], qy, it)
    with pytest.raises(Distill4dError, match="one length"):
        encode_spots(qx[:-1], qy, it)
    with pytest.raises(Distill4dError, match="counts"):
        encode_batch(qx[None], qy[None], it[None], np.array([len(qx) + 1]))


def test_encode_peaks_needs_calibration():
    from distill4d.bragg.peaks import BraggPeaks
    from distill4d.calibration import Calibration

    qx, qy, it = _hex_spots()
    px = 0.02
    peaks = [np.stack([qx / px + 64, qy / px + 64, it], axis=1)] * 2
    unc = BraggPeaks.from_list(peaks, (1, 2))
    with pytest.raises(Distill4dError, match="q_pixel_inv_A"):
        encode_peaks(unc)
    cal = BraggPeaks.from_list(peaks, (1, 2), Calibration(q_pixel_inv_A=px, origin_px=(64.0, 64.0)))
    F = encode_peaks(cal)
    assert F.shape == (1, 2, N_FEATURES)
    np.testing.assert_allclose(F[0, 1], encode_spots(qx, qy, it), atol=1e-9)
