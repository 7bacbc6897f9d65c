"""The small L-BFGS of ``ml._common.lbfgs``: it reaches the minimum of a badly scaled quadratic and of
Rosenbrock's function, stops at its iteration cap, and does not import ``torch._dynamo``."""

from __future__ import annotations

import pytest
from _dynamo import imports_dynamo

torch = pytest.importorskip("torch")

from distill4d.ml._common.lbfgs import lbfgs


def test_lbfgs_minimises_a_badly_scaled_quadratic():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 4, 20, dtype=torch.float64)) @ q.T  # condition number 1e4
    b = torch.randn(20, dtype=torch.float64)
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    f, it = lbfgs([x], lambda: 0.5 * x @ a @ x - b @ x, max_iter=500, tol_grad=1e-10, tol_change=0.0)
    exact = torch.linalg.solve(a, b)
    torch.testing.assert_close(x.detach(), exact, rtol=1e-4, atol=1e-6)
    assert it < 500


def test_lbfgs_rosenbrock_and_iteration_cap():
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)

    def rosen():
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    f, it = lbfgs([x], rosen, max_iter=300, tol_change=0.0)
    assert f < 1e-10 and float((x.detach() - 1).abs().max()) < 1e-4
    y = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    _, it = lbfgs([y], lambda: (1 - y[0]) ** 2 + 100 * (y[1] - y[0] ** 2) ** 2, max_iter=5)
    assert it == 5


def test_lbfgs_does_not_import_dynamo():
    code = ("from distill4d.ml._common.lbfgs import lbfgs; p = torch.ones(3, requires_grad=True); "
            "lbfgs([p], lambda: (p * p).sum(), max_iter=5)")
    assert imports_dynamo(code) == "False"
