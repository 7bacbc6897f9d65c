"""Figures get scale bars from the calibration, and pixel axes without one."""

from __future__ import annotations

import numpy as np
import pytest

from distill4d import Calibration
from distill4d.plot import add_scale_bar, images_figure, save_bragg_vector_map_png
from distill4d.plot.scalebar import nice_length


def _bars(ax):
    return [a for a in ax.artists if a.get_gid() == "scale_bar"]


def _close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_nice_length():
    assert nice_length(37.0) == 20.0 and nice_length(0.26) == 0.2 and nice_length(5.0) == 5.0
    with pytest.raises(ValueError, match="target"):
        nice_length(0.0)


def test_real_space_maps_get_a_scale_bar_only_when_calibrated():
    img = {"bf": np.random.default_rng(0).random((40, 50))}
    fig = images_figure(img, scan_step_A=2.0)
    (bar,) = _bars(fig.axes[0])
    assert bar.txt_label.get_text() == "2 nm"  # 50 px * 2 Å * 0.25 = 25 Å -> 20 Å
    _close(fig)
    fig = images_figure(img, scan_step_A=0.1)
    assert _bars(fig.axes[0])[0].txt_label.get_text() == "1 Å"
    _close(fig)
    fig = images_figure(img)
    assert not _bars(fig.axes[0]) and fig.axes[0].get_xlabel() == "scan y (px)"
    _close(fig)


def test_diffraction_patterns_get_an_inverse_angstrom_bar(tmp_path):
    fig = images_figure({"mean": np.ones((64, 64))}, q_pixel_inv_A=0.02, diffraction=True)
    assert _bars(fig.axes[0])[0].txt_label.get_text() == "0.2 1/Å"
    _close(fig)
    fig = images_figure({"mean": np.ones((64, 64))}, diffraction=True)
    assert not _bars(fig.axes[0]) and fig.axes[0].get_ylabel() == "qx (px)"
    _close(fig)
    with pytest.raises(ValueError, match="diffraction=True"):
        images_figure({"mean": np.ones((4, 4))}, q_pixel_inv_A=0.02)
    with pytest.raises(ValueError, match="unit"):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        try:
            add_scale_bar(ax, 1.0, "nm")
        finally:
            _close(fig)
    from distill4d.bragg import BraggPeaks

    peaks = BraggPeaks.from_list([np.array([[10.0, 12.0, 1.0]])], (1, 1), Calibration(q_pixel_inv_A=0.02))
    assert save_bragg_vector_map_png(tmp_path / "bvm.png", np.ones((32, 32)), peaks).stat().st_size > 1000


def test_strain_map_plot_has_a_scale_bar_when_calibrated():
    from distill4d.lattice import StrainMap

    z = np.zeros((6, 8))
    sm = StrainMap(z, z, z, z, np.zeros((6, 8), bool), np.eye(2), calibration=Calibration(scan_step_A=5.0))
    fig = sm.plot()
    assert all(len(_bars(ax)) == 1 for ax in fig.axes[:4])
    _close(fig)
    fig = StrainMap(z, z, z, z, np.zeros((6, 8), bool), np.eye(2)).plot()
    assert not any(_bars(ax) for ax in fig.axes) and fig.axes[0].get_xlabel() == "scan y (px)"
    _close(fig)


def test_an_offset_map_is_shown_minus_its_mean_and_the_colour_bar_says_so():
    """A CoM around +20 px on a diverging map centred at 0 was one flat red: minus its mean it
    spans the colour map, and the colour-bar label gives the mean that was subtracted."""
    com = 20.0 + np.random.default_rng(0).normal(0, 0.5, (16, 16))
    fig = images_figure({"com_qx": com, "bf": com}, units={"com_qx": "px"}, diverging=("com_qx",),
                        subtract_mean=("com_qx",))
    im = fig.axes[0].images[0]
    lo, hi = im.get_clim()
    assert lo == -hi and hi < 3  # centred on 0, limits set by the variation, not the offset
    np.testing.assert_allclose(np.ma.getdata(im.get_array()), com - com.mean())
    labels = [ax.get_ylabel() for ax in fig.axes[2:]]
    assert any("mean" in s and "+20" in s and "px" in s for s in labels)
    assert fig.axes[1].images[0].get_clim()[0] > 18  # not listed: shown as it is
    _close(fig)


def test_uncalibrated_axes_are_labelled_in_every_figure(tmp_path):
    from distill4d.lattice import StrainMap

    z = np.zeros((6, 8))
    for fig in (images_figure({"a": np.ones((4, 5))}), images_figure({"a": np.ones((4, 5))}, diffraction=True),
                StrainMap(z, z, z, z, np.zeros((6, 8), bool), np.eye(2)).plot()):
        for ax in fig.axes:
            if ax.images:  # colour bars have no image
                assert ax.get_xlabel().endswith("(px)") and ax.get_ylabel().endswith("(px)")
        _close(fig)
