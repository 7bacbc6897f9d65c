import numpy as np
import pytest

from distill4d import Calibration, DataCube


@pytest.fixture
def cube():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 500, (6, 7, 16, 18), dtype=np.uint16)
    return DataCube(data, Calibration(q_pixel_inv_A=0.01, scan_step_A=1.0, origin_px=(8.0, 9.0)))


def test_shape_properties(cube):
    assert cube.shape == (6, 7, 16, 18)
    assert cube.scan_shape == (6, 7) and cube.pattern_shape == (16, 18)
    assert cube.n_patterns == 42 and cube.nbytes == 6 * 7 * 16 * 18 * 2
    assert not cube.is_lazy
    assert "6x7" in repr(cube)


@pytest.mark.parametrize("shape", [(16, 16), (3, 16, 16), (1, 2, 3, 4, 5)])
def test_wrong_dimensions_are_refused(shape):
    with pytest.raises(ValueError, match="4D"):
        DataCube(np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.complex64, bool, object])
def test_wrong_dtypes_are_refused(dtype):
    with pytest.raises(TypeError, match="real detector intensities"):
        DataCube(np.zeros((2, 2, 4, 4), dtype=dtype))


def test_empty_axis_is_refused():
    with pytest.raises(ValueError, match="empty"):
        DataCube(np.zeros((0, 2, 4, 4)))


def test_slicing_keeps_calibration_and_values(cube):
    sub = cube[1:4, 2:]
    assert sub.shape == (3, 5, 16, 18)
    assert sub.calibration == cube.calibration
    np.testing.assert_array_equal(sub.data, cube.data[1:4, 2:])
    np.testing.assert_array_equal(cube[2, 3], cube.data[2, 3])
    with pytest.raises(IndexError):
        cube[0, 0, 0]
    with pytest.raises(IndexError, match="no scan position"):
        cube[10:12]
    with pytest.raises(IndexError):
        cube.pattern(6, 0)


def test_crop_moves_origin(cube):
    c = cube.crop_q(slice(4, 12), slice(3, None))
    assert c.pattern_shape == (8, 15)
    assert c.calibration.origin_px == (4.0, 6.0)
    np.testing.assert_array_equal(c.data, cube.data[:, :, 4:12, 3:])
    with pytest.raises(ValueError, match="leaves no pixel"):
        cube.crop_q(slice(5, 5), slice(None))


@pytest.mark.parametrize("lazy", [False, True])
def test_binning_sums_and_rescales(cube, lazy):
    src = DataCube(cube.to_dask(chunk_bytes=4000), cube.calibration) if lazy else cube
    b = src.bin_q(2)
    expected = cube.data.astype(np.int64).reshape(6, 7, 8, 2, 9, 2).sum(axis=(3, 5))
    got = b.data.compute() if lazy else b.data
    np.testing.assert_array_equal(got, expected)
    assert b.calibration.q_pixel_inv_A == pytest.approx(0.02)
    r = src.bin_r(3)  # 6x7 scan -> 2x2, the 7th column trimmed
    expected_r = cube.data[:, :6].astype(np.int64).reshape(2, 3, 2, 3, 16, 18).sum(axis=(1, 3))
    np.testing.assert_array_equal(r.data.compute() if lazy else r.data, expected_r)
    assert r.calibration.scan_step_A == 3.0
    with pytest.raises(ValueError, match="larger"):
        src.bin_r(8)


@pytest.mark.parametrize("lazy", [False, True])
def test_mean_and_max_pattern(cube, lazy):
    src = DataCube(cube.to_dask(chunk_bytes=4000), cube.calibration) if lazy else cube
    np.testing.assert_allclose(src.mean_pattern(memory_budget=1 << 20), cube.data.mean(axis=(0, 1)))
    np.testing.assert_array_equal(src.max_pattern(), cube.data.max(axis=(0, 1)))


def test_from_array_with_calibration_keywords():
    dc = DataCube.from_array(np.ones((1, 1, 4, 4)), energy_eV=200e3, semiangle_mrad=10)
    assert dc.calibration.energy_eV == 200e3 and dc.calibration.semiangle_mrad == 10
    assert dc.with_calibration(scan_step_A=2).calibration.scan_step_A == 2
