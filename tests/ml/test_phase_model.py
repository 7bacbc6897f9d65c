"""Phase-retrieval layers: the 4D convolution against a direct loop, the radial model's exact
rotation invariance, whole-block evaluation equal to cluster-by-cluster evaluation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill4d.ml.phase.train import feature_scale
from distill4d.ml.phase.model import (
    Conv4d,
    Conv4dNet,
    PhaseConfig,
    RadialLinear,
    RingMLP,
    radial_index,
)


def _conv4d_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Nested-loop 4D convolution (cross-correlation): valid on the scan axes, zero 'same' on q."""
    B, _, X, Y, Qx, Qy = x.shape
    O, _, k, _, _, _ = w.shape
    h = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 0), (h, h), (h, h)))
    out = np.zeros((B, O, X - k + 1, Y - k + 1, Qx, Qy))
    for bb in range(B):
        for o in range(O):
            for i in range(X - k + 1):
                for j in range(Y - k + 1):
                    for u in range(Qx):
                        for v in range(Qy):
                            win = xp[bb, :, i : i + k, j : j + k, u : u + k, v : v + k]
                            out[bb, o, i, j, u, v] = (win * w[o]).sum() + b[o]
    return out


def test_conv4d_equals_direct_nested_loop():
    torch.manual_seed(0)
    layer = Conv4d(2, 3).double()
    x = torch.randn(2, 2, 5, 4, 6, 5, dtype=torch.float64)
    got = layer(x).detach().numpy()
    want = _conv4d_direct(x.numpy(), layer.weight.detach().numpy(), layer.bias.detach().numpy())
    assert got.shape == (2, 3, 3, 2, 6, 5)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_conv4d_needs_enough_scan_positions():
    with pytest.raises(ValueError, match="at least 3 scan positions"):
        Conv4d(1, 1)(torch.zeros(1, 1, 2, 5, 4, 4))


def test_radial_index_is_rotation_and_mirror_invariant():
    for n in (8, 9, 16):
        idx = radial_index(n, n // 2)
        np.testing.assert_array_equal(idx, np.rot90(idx))
        np.testing.assert_array_equal(idx, idx.T)
        assert idx.min() == 0 and idx.max() == n // 2 - 1


@pytest.mark.parametrize("cluster", [3, 5])
def test_radial_linear_exactly_rotation_invariant(cluster):
    torch.manual_seed(1)
    model = RadialLinear(PhaseConfig(model="linear", size=16, cluster=cluster)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    block = torch.rand(2, 6 + cluster - 1, 7 + cluster - 1, 16, 16, dtype=torch.float64)
    out = model(block)
    # rotate scan and detector by 90 degrees together: the output rotates with the scan
    rot = torch.rot90(torch.rot90(block, 1, dims=(1, 2)), 1, dims=(3, 4))
    torch.testing.assert_close(model(rot), torch.rot90(out, 1, dims=(1, 2)), rtol=1e-12, atol=1e-12)
    # rotating only the detector (radial masks) leaves the output unchanged
    torch.testing.assert_close(model(torch.rot90(block, 1, dims=(3, 4))), out, rtol=1e-12, atol=1e-12)
    tr = block.transpose(1, 2).transpose(3, 4)
    torch.testing.assert_close(model(tr), out.transpose(1, 2), rtol=1e-12, atol=1e-12)
    # and it is not trivially constant
    assert float(out.detach().std()) > 1e-3


def test_ring_mlp_rotates_with_scan_and_detector_together():
    """The MLP's features couple the cluster offset's direction with the detector's (cos h(φ_p − φ_k)):
    rotating scan and detector together rotates the output, transposing both transposes it; rotating
    the detector alone (a different sample) changes it, unlike the radial model."""
    torch.manual_seed(1)
    model = RingMLP(PhaseConfig(model="mlp", size=16, cluster=5, harmonics=2, hidden=8)).double()
    block = torch.rand(2, 6 + 4, 7 + 4, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        f = model.features(block).reshape(-1, model.mean.numel())
        model.mean.copy_(f.mean(0))
        model.scale.copy_(feature_scale(f.std(0)) * 3)
        out = model(block)
    assert float(out.std()) > 0.1
    assert out.shape == (2, 6, 7) and model.features(block).shape == (2, 6, 7, 6 * 8 + 2 * 5 * 8)
    rot = torch.rot90(torch.rot90(block, 1, dims=(1, 2)), 1, dims=(3, 4))
    torch.testing.assert_close(model(rot), torch.rot90(out, 1, dims=(1, 2)), rtol=1e-10, atol=1e-12)
    tr = block.transpose(1, 2).transpose(3, 4)
    torch.testing.assert_close(model(tr), out.transpose(1, 2), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        moved = model(torch.rot90(block, 1, dims=(3, 4)))
    assert float((moved - out).abs().max()) > 1e-3
    # harmonic 1 of a pattern whose intensity is shifted towards +kx is, at the cluster position one step
    # in +x, positive (cos 0 = 1), and one step in -x negative: the centre-of-mass coupling iDPC uses
    pat = torch.zeros(1, 5, 5, 16, 16, dtype=torch.float64)
    pat[0, 3, 2, 12, 7:9] = 1.0  # the cluster position (+1, 0) of the output (0, 0); kx > 0 pixels
    f = model.features(pat)[0, 0, 0]
    n_rings, nb = 6, 8
    h1 = f[n_rings * nb : n_rings * nb + (n_rings - 1) * nb].reshape(n_rings - 1, nb)
    assert float(h1[0].sum()) > 0.9  # ring 1 (distance 1): cos(0 - ~0) ≈ 1
    pat2 = torch.zeros_like(pat)
    pat2[0, 1, 2, 12, 7:9] = 1.0  # the cluster position (-1, 0)
    h1b = model.features(pat2)[0, 0, 0][n_rings * nb : n_rings * nb + (n_rings - 1) * nb].reshape(n_rings - 1, nb)
    assert float(h1b[0].sum()) < -0.9


@pytest.mark.parametrize("model_name", ["linear", "conv4d", "mlp"])
def test_block_evaluation_equals_cluster_by_cluster(model_name):
    """Fully convolutional in the scan: a whole block gives what each c x c cluster gives alone."""
    torch.manual_seed(2)
    cfg = PhaseConfig(model=model_name, size=8, cluster=5)
    model = {"linear": RadialLinear, "conv4d": Conv4dNet, "mlp": RingMLP}[model_name](cfg).double().eval()
    block = torch.rand(1, 4 + 4, 3 + 4, 8, 8, dtype=torch.float64)
    whole = model(block)[0]
    assert whole.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            alone = model(block[:, i : i + 5, j : j + 5])[0, 0, 0]
            torch.testing.assert_close(alone, whole[i, j], rtol=1e-10, atol=1e-12)


def test_config_checks():
    with pytest.raises(ValueError, match="model must be one of"):
        PhaseConfig(model="ptycho")
    with pytest.raises(ValueError, match="cluster must be 3 or 5"):
        PhaseConfig(cluster=4)
    with pytest.raises(ValueError, match="needs cluster = 5"):
        PhaseConfig(model="conv4d", cluster=3)
    with pytest.raises(ValueError, match="multiple of 4"):
        PhaseConfig(size=18)
    with pytest.raises(ValueError, match="harmonics must be an integer 0 to 4"):
        PhaseConfig(model="mlp", harmonics=5)
    with pytest.raises(ValueError, match="unknown phase model config keys"):
        PhaseConfig.from_dict({"model": "linear", "filters": 3})
