"""Tests of distill4d.identify.setnet: the set network on spot lists (experimental, not shipped)."""

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.identify.setnet import _N_EDGE, SetNet, spot_sets


def _random_net(seed=0, hidden=16, layers=2, classes=7):
    rng = np.random.default_rng(seed)
    shapes = {"embed.W": (3, hidden), "embed.b": (hidden,), "head.W0": (2 * hidden + 1, 2 * hidden),
              "head.b0": (2 * hidden,), "head.W1": (2 * hidden, classes), "head.b1": (classes,)}
    for i in range(layers):
        shapes.update({f"msg{i}.A": (hidden, hidden), f"msg{i}.B": (hidden, hidden), f"msg{i}.C": (_N_EDGE, hidden),
                       f"msg{i}.c": (hidden,), f"upd{i}.W": (2 * hidden, hidden), f"upd{i}.b": (hidden,)})
    params = {k: rng.normal(scale=0.5, size=s).astype(np.float32) for k, s in shapes.items()}
    return SetNet(params, np.arange(classes), layers)


def _patterns(n=20, k=50, seed=1):
    rng = np.random.default_rng(seed)
    qx, qy = rng.uniform(-1.5, 1.5, (n, k)), rng.uniform(-1.5, 1.5, (n, k))
    it = rng.uniform(0.01, 1.0, (n, k))  # all different: no tie at the cut of the strongest spots
    return qx, qy, it, np.full(n, k)


@pytest.mark.parametrize("angle_deg, mirror", [(37.0, False), (90.0, False), (-123.4, True), (0.0, True)])
def test_output_invariant_to_rotation_and_mirror(angle_deg, mirror):
    net = _random_net()
    qx, qy, it, n = _patterns()
    p0 = net.logits(spot_sets(qx, qy, it, n))
    a = np.radians(angle_deg)
    rx, ry = np.cos(a) * qx - np.sin(a) * qy, np.sin(a) * qx + np.cos(a) * qy
    if mirror:
        ry = -ry
    p1 = net.logits(spot_sets(rx, ry, it, n))
    assert np.abs(p0).max() > 1.0  # the outputs are not trivially constant
    np.testing.assert_allclose(p1, p0, atol=1e-3 * np.abs(p0).max())  # float32 arithmetic


def test_output_invariant_to_spot_order_and_calibration():
    net = _random_net(seed=2)
    qx, qy, it, n = _patterns(seed=3)
    p0 = net.logits(spot_sets(qx, qy, it, n))
    perm = np.random.default_rng(4).permutation(qx.shape[1])
    np.testing.assert_allclose(net.logits(spot_sets(qx[:, perm], qy[:, perm], it[:, perm], n)), p0, atol=1e-5)
    # a 2 % calibration error scales every g: the spots are seen in units of the pattern's scale
    np.testing.assert_allclose(net.logits(spot_sets(1.02 * qx, 1.02 * qy, it, n)), p0, atol=1e-3 * np.abs(p0).max())
    # but the network does see the geometry: moving the spots changes the output
    assert np.abs(net.logits(spot_sets(qx ** 3, qy, it, n)) - p0).max() > 1e-2


def test_spot_sets_shapes_and_bad_input():
    qx, qy, it, n = _patterns(n=3, k=10)
    n = np.array([10, 4, 0])
    s = spot_sets(qx, qy, it, n, k=6)
    assert s["v"].shape == (3, 6, 2) and s["mask"].sum(axis=1).tolist() == [6, 4, 0]
    assert np.isnan(s["scale"][2]) and s["w"].max() <= 1.0
    with pytest.raises(Distill4dError, match="one shape"):
        spot_sets(qx, qy[:, :5], it, n)


def test_training_is_seeded_and_resumes_from_its_state():
    pytest.importorskip("torch")
    import torch

    from distill4d.identify.setnet import fit_setnet

    torch.set_num_threads(1)
    qx, qy, it, n = _patterns(n=48, k=12, seed=5)
    sets = spot_sets(qx, qy, it, n, k=8)
    y = (qx[:, 0] > 0).astype(int)
    state = {}
    fit_setnet(sets, y, 3, hidden=8, epochs=3, batch=16, state=state)
    assert state["epoch"] == 3
    # the same recipe run to the end in one go, and resumed from the state after 2 of 3 epochs
    once = fit_setnet(sets, y, 3, hidden=8, epochs=3, batch=16)
    part = {}
    with pytest.raises(_Stop):
        fit_setnet(sets, y, 3, hidden=8, epochs=3, batch=16, state=part, callback=lambda ep, loss: ep < 2 or _stop())
    assert part["epoch"] == 2
    resumed = fit_setnet(sets, y, 3, hidden=8, epochs=3, batch=16, state=part)
    np.testing.assert_allclose(resumed.logits(sets), once.logits(sets), atol=1e-5)


class _Stop(Exception):
    pass


def _stop():
    raise _Stop
