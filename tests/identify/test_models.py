"""Tests of distill4d.identify.models: the random-forest hierarchy on a tiny prototype library."""

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.identify.encode import N_FEATURES, encode_batch
from distill4d.identify.models import SYSTEMS, CrystalIdentifier, aggregate, top_k

CUBIC = ("Si", "Al", "Au", "NaCl", "Fe", "Cu", "GaAs")
HEXAGONAL = ("Mg", "Ti", "MoS2", "GaN", "Zn", "hBN")
HELD_OUT = ("Cu", "GaAs", "Zn", "hBN")  # split by structure: none of their patterns is trained on


@pytest.fixture(scope="module")
def trained():
    from distill4d.simulate.spots import spot_library

    protos = CUBIC + HEXAGONAL
    lib = spot_library([], prototypes=protos, n_orientations=30, seed=0, excitation_error_inv_A=0.03)
    X = encode_batch(lib.qx, lib.qy, lib.intensity, lib.counts)
    st = lib.structure
    test = np.array([protos.index(p) for p in HELD_OUT])
    tr = ~np.isin(st, test)
    model = CrystalIdentifier(n_estimators=60, seed=0).fit(
        X[tr], lib.system[st[tr]], lib.space_group[st[tr]], lib.cellpar[st[tr]]
    )
    return model, lib, X, test


def test_cubic_vs_hexagonal_on_held_out_structures(trained):
    model, lib, X, test = trained
    st = lib.structure
    te = np.isin(st, test)
    acc = np.mean(model.predict_system(X[te]) == lib.system[st[te]])
    # measured 0.625-0.70 over forest seeds 0, 1 and 60-200 trees (one pattern in a random
    # orientation, the 4 held-out prototypes; 0.675 here): Cu and GaAs 1.0, Zn 0.5-0.67,
    # layered hBN 0.0-0.13 (taken for cubic). Aggregated over their 30 patterns (log or
    # margin), Cu and GaAs are always right, Zn in 5 of 6 settings, hBN never.
    assert acc >= 0.55
    for j in test[:2]:  # the cubic ones
        assert aggregate(model.predict_proba(X[st == j]), "log").argmax() == lib.system[j]
        assert aggregate(model.predict_proba(X[st == j]), "margin").argmax() == lib.system[j]
    assert set(model.predict_system(X)) <= {SYSTEMS.index("cubic"), SYSTEMS.index("hexagonal")}


def test_calibration_error_moves_lattice_not_class(trained):
    model, lib, X, test = trained
    rows = np.isin(lib.structure, test)
    X2 = encode_batch(1.02 * lib.qx[rows], 1.02 * lib.qy[rows], lib.intensity[rows], lib.counts[rows])
    np.testing.assert_array_equal(model.predict_system(X2), model.predict_system(X[rows]))
    a1, a2 = model.predict_lattice(X[rows]), model.predict_lattice(X2)
    np.testing.assert_allclose(a1[:, :3] / a2[:, :3], 1.02, rtol=1e-6)  # 1/Å scaled up: Å down by 2 %
    np.testing.assert_allclose(a1[:, 3:], a2[:, 3:], atol=1e-9)


def test_space_group_and_lattice_outputs(trained):
    model, lib, X, test = trained
    p = model.predict_space_group_proba(X[:10])
    assert p.shape == (10, model.space_groups().size)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert set(model.space_groups()) <= {225, 227, 229, 216, 221, 194, 186, 187}
    lat = model.predict_lattice(X[:10])
    assert lat.shape == (10, 6) and np.all(lat[:, :3] > 1.0) and np.all(lat[:, :3] < 30.0)


def test_top_k_and_aggregate():
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.7, 0.2, 0.1]])
    idx, val = top_k(p, 2)
    np.testing.assert_array_equal(idx, [[0, 1], [1, 2], [0, 1]])
    np.testing.assert_allclose(val, [[0.6, 0.3], [0.5, 0.3], [0.7, 0.2]])
    agg = aggregate(p, "log")
    assert agg.argmax() == 0 and agg.sum() == pytest.approx(1.0)
    m = aggregate(p, "margin")
    np.testing.assert_allclose(m, [(0.3 - 0.3 + 0.5) / 3, (-0.3 + 0.2 - 0.5) / 3, (-0.5 - 0.2 - 0.6) / 3])
    with pytest.raises(Distill4dError, match="method"):
        aggregate(p, "vote")


def test_bad_input():
    model = CrystalIdentifier(n_estimators=2)
    with pytest.raises(Distill4dError, match="not trained"):
        model.predict_proba(np.zeros((1, N_FEATURES)))
    with pytest.raises(Distill4dError, match="shape"):
        model.fit(np.zeros((3, 5)), [0, 0, 0], [1, 1, 1], np.ones((3, 6)))
    X = np.zeros((3, N_FEATURES))
    X[0, 0] = np.nan
    with pytest.raises(Distill4dError, match="NaN"):
        model.fit(X, [0, 0, 0], [1, 1, 1], np.ones((3, 6)))
    with pytest.raises(Distill4dError, match="shapes"):
        model.fit(np.ones((3, N_FEATURES)), [0, 0], [1, 1, 1], np.ones((3, 6)))


def test_save_and_load_predict_the_same(trained, tmp_path):
    model, lib, X, test = trained
    path = tmp_path / "identifier.npz"
    model.save(path)
    back = CrystalIdentifier.load(path)
    # the file holds float32 leaf values (thresholds rounded so that every split is the same): same
    # decisions, values equal to float32 precision
    np.testing.assert_array_equal(back.predict_system(X), model.predict_system(X))
    np.testing.assert_allclose(back.predict_proba(X), model.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(back.predict_space_group_proba(X), model.predict_space_group_proba(X), atol=1e-6)
    np.testing.assert_allclose(back.predict_lattice(X), model.predict_lattice(X), rtol=1e-6)
    np.savez(tmp_path / "other.npz", meta=np.array("{}"))
    with pytest.raises(Distill4dError, match="not a distill4d crystal identifier"):
        CrystalIdentifier.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        CrystalIdentifier.load(tmp_path / "missing.npz")


def test_mlp_system_classifier_trains_saves_and_loads(trained, tmp_path):
    pytest.importorskip("torch")
    _, lib, X, test = trained
    st = lib.structure
    tr = ~np.isin(st, test)
    model = CrystalIdentifier(n_estimators=20, seed=0, system_classifier="mlp").fit(
        X[tr], lib.system[st[tr]], lib.space_group[st[tr]], lib.cellpar[st[tr]]
    )
    # the network separates the two training systems (cubic / hexagonal) on its own training patterns
    assert np.mean(model.predict_system(X[tr]) == lib.system[st[tr]]) > 0.9
    model.save(tmp_path / "m.npz")
    back = CrystalIdentifier.load(tmp_path / "m.npz")
    assert back.system_classifier == "mlp"
    np.testing.assert_allclose(back.predict_proba(X), model.predict_proba(X), atol=1e-5)
    with pytest.raises(Distill4dError, match="system_classifier"):
        CrystalIdentifier(system_classifier="svm")
