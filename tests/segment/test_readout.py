"""Read-out: Otsu, masks, labels on pixels, fractions, channel-to-variant grouping and the scores;
the baselines on a two-domain image."""

from __future__ import annotations

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.segment import segment
from distill4d.segment.readout import (
    channel_shares,
    adjusted_rand_index,
    area_fractions,
    channel_masks,
    group_channels,
    label_map,
    match_labels,
    mean_iou,
    otsu_threshold,
    upsample_strength,
)
from distill4d.simulate.domains import simulate_domains


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.8, 0.03, 300)])
    thr = otsu_threshold(v)
    assert 0.3 < thr < 0.7
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


def test_channel_shares_drop_the_contrast():
    """A window's shares do not change when its contrast does; all-zero windows stay 0; with shares,
    a domain whose contrast falls by 5x across the image is not split by the Otsu threshold."""
    ch = np.array([[2.0, 2.0, 0.0], [0.4, 0.4, 0.0], [0.0, 0.0, 0.0]], np.float32)
    sh = channel_shares(ch)
    np.testing.assert_allclose(sh, [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 0]])
    # one variant on the left half, the other on the right, contrast ramping 1 -> 0.2 down the rows
    ramp = np.linspace(1.0, 0.2, 12)[:, None]
    a = np.zeros((1, 12, 12, 2), np.float32)
    a[0, :, :6, 0] = ramp * 1.0
    a[0, :, 6:, 1] = ramp * 1.0
    a[0, :, :6, 1] = ramp * 0.1  # a little of the other channel everywhere
    a[0, :, 6:, 0] = ramp * 0.1
    raw, _ = channel_masks(a)
    shares, _ = channel_masks(channel_shares(a))
    assert raw[..., 0].sum() < 0.8 * 72  # the raw threshold drops the weak rows
    assert shares[..., 0].sum() == 72 and shares[0, :, :6, 0].all()


def test_masks_open_and_close():
    ch = np.zeros((2, 20, 20, 2), np.float32)
    ch[:, :, :10, 0] = 1.0
    ch[:, :, 10:, 1] = 1.0
    ch[0, 5, 15, 0] = 1.0  # a lone window: removed by the opening
    ch[0, 5, 5, 0] = 0.0  # a hole: filled by the closing
    masks, thr = channel_masks(ch)
    assert not masks[0, 5, 15, 0] and masks[0, 5, 5, 0]
    assert masks[..., 0].sum() == 2 * 20 * 10  # the borders are not eroded
    assert np.all(thr < 1) and np.all(thr >= 0)


def test_upsampled_labels_put_the_wall_between_window_centres():
    # two windows per row, a wall between them: pixels left of the middle are variant 0
    s = np.zeros((1, 2, 2), np.float32)
    s[0, 0], s[0, 1] = (3.0, 0.0), (0.0, 3.0)
    s = np.repeat(s, 2, axis=0)  # (ny=2, nx=2, V=2)
    up = upsample_strength(s, window_px=16, step_px=16, image_hw=(32, 32))
    lab = label_map(up)
    assert lab.shape == (32, 32)
    assert np.all(lab[:, :16] == 0) and np.all(lab[:, 16:] == 1)
    assert area_fractions(lab[None], 2).tolist() == [[0.5, 0.5]]


def test_grouping_by_orientation_and_period():
    angles = [2.0, 178.5, 91.0, 88.0, 45.0, 0.0]
    radii = [10, 10.3, 10, 10.2, 10, 20]
    v = group_channels(angles, radii, tol_deg=10)
    assert v[0] == v[1] != v[2] == v[3]  # 2° and 178.5° are 3.5° apart
    assert len(set(v)) == 4  # 0°/90°/45° and the 0° of another period
    assert group_channels(angles, radii, n_variants=2, used=[1, 1, 1, 1, 0, 0]).tolist() == [0, 0, 1, 1, -1, -1]


def test_scores_after_matching():
    truth = np.array([[0, 0, 1, 1]])
    pred = np.array([[5, 5, 2, 2]])
    assert match_labels(pred, truth) == {5: 0, 2: 1}
    assert mean_iou(pred, truth) == 1.0 and adjusted_rand_index(pred, truth) == 1.0
    assert mean_iou(np.array([[5, 5, 5, -1]]), truth) == pytest.approx((2 / 3 + 0) / 2)
    with pytest.raises(Distill4dError, match="same shape"):
        match_labels(pred, truth[:, :2])


@pytest.mark.parametrize("method", ["kmeans", "nmf", "pca-gmm"])
def test_baselines_separate_two_stripe_domains(method):
    d = simulate_domains((256, 256), angles_deg=(20, 110), periods_px=8, dose=50, seed=3)
    s = segment(d.images[0], method, domains=2, window_px=32, step_px=8, seed=0)
    assert s.labels.shape == (1, 256, 256) and s.fractions.shape == (1, 2)
    assert mean_iou(s.labels, d.labels) > 0.92  # measured 0.937-0.973 over seeds 3-5
    # variants numbered by orientation, each within a few degrees of the truth
    assert np.allclose(np.sort(s.variant_angles_deg), [20, 110], atol=3)
    assert np.abs(np.sort(s.fractions[0]) - np.sort(d.fractions[0])).max() < 0.08


def test_unknown_method_is_refused():
    with pytest.raises(Distill4dError, match="method must be one of"):
        segment(np.zeros((64, 64)), "dbscan")


def test_4d_scan_through_a_virtual_image():
    """route="virtual": the bright-field image of a scan whose disk intensity follows a two-domain
    stripe image is segmented like the image itself."""
    import distill4d
    from distill4d.segment import segment_datacube

    d = simulate_domains((128, 128), angles_deg=(0, 90), periods_px=6, dose=30, seed=4)
    yy, xx = np.mgrid[:12, :12]
    disk = ((yy - 6) ** 2 + (xx - 6) ** 2 <= 9).astype(np.float32)
    data = d.images[0][:, :, None, None] * disk + 1
    dc = distill4d.DataCube.from_array(data.astype(np.float32))
    s = segment_datacube(dc, "kmeans", route="virtual", window_px=32, step_px=8, domains=2,
                         engine={"progress": False})
    assert s.labels.shape == (1, 128, 128)
    assert mean_iou(s.labels, d.labels) > 0.8  # measured 0.885
    with pytest.raises(Distill4dError, match="route"):
        segment_datacube(dc, "kmeans", route="sideways")


def test_group_spectra_keeps_pure_channels_of_different_variants_apart():
    # four channels with the norms and correlations measured on a three-variant stripe image
    # (validation draw, autoencoder with 8 channels): 0 = variant B, 1 = variant C, 2 = variant A,
    # 3 = a channel mixing B and C. Centring the spectra on the four channels' common mean made 0
    # and 2 the closest pair (window-grid mIoU 0.475 instead of 0.721 with the right grouping).
    from scipy.linalg import hadamard

    from distill4d.segment.readout import group_spectra

    r = np.array([[1, 0.25, 0.45, 0.63], [0.25, 1, 0.24, 0.60], [0.45, 0.24, 1, 0.30], [0.63, 0.60, 0.30, 1]])
    norms = np.array([2.0, 2.0, 1.9, 2.7])
    chol = np.linalg.cholesky(r * np.outer(norms, norms))
    basis = hadamard(16)[1:5] / 4.0  # orthonormal, zero-mean patterns
    spectra = (chol @ basis).reshape(4, 4, 4) + 5.0  # plus a common background
    g = group_spectra(spectra, 3)
    assert len({g[0], g[1], g[2]}) == 3 and g[3] in (g[0], g[1])
    # unused channels stay -1
    g = group_spectra(np.concatenate([spectra, spectra[:1]]), 3, used=[True] * 4 + [False])
    assert g[4] == -1 and len({g[0], g[1], g[2]}) == 3
