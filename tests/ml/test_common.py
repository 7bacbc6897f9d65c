"""The pieces the models share: the training stop rule and the one model-card loader."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from distill4d.ml._common.loop import StopRule
from distill4d.ml._common.model_files import CARD_FORMATS, ModelCard, read_card


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_stop_rule_max_steps():
    rule = StopRule(3)
    assert not rule.steps_done(2) and not rule.stopped
    assert rule.steps_done(3) and rule.reason == "max_steps"


def test_stop_rule_patience_counts_evaluations_without_relative_improvement():
    rule = StopRule(100, patience=2, min_rel_improvement=0.1)
    assert rule.record(1, 1.0) and rule.best == 1.0 and rule.best_step == 1
    assert not rule.record(2, 0.95)  # less than 10 % lower: no improvement
    assert rule.stale == 1 and not rule.stopped
    assert rule.record(3, 0.85)  # > 10 % lower than 1.0
    assert rule.stale == 0 and rule.best_step == 3
    assert not rule.record(4, 0.9) and not rule.record(5, 0.8)
    assert rule.stopped and rule.reason == "patience" and rule.best == 0.85


def test_stop_rule_ignores_warm_up_evaluations_and_nan():
    rule = StopRule(100, patience=1, start_after_step=10)
    assert not rule.record(10, 0.1) and rule.stale == 0 and math.isinf(rule.best)
    assert not rule.record(11, float("nan")) and rule.stopped  # NaN is never an improvement


def test_stop_rule_wall_time_budget():
    clock = _Clock()
    rule = StopRule(10, max_minutes=1.0, clock=clock)
    clock.t += 60.0
    assert not rule.out_of_time()
    clock.t += 0.5
    assert rule.out_of_time() and rule.reason == "max_minutes"
    rule = StopRule(10, max_minutes=0, clock=clock)  # 0: no budget (FCU-Net's convention)
    clock.t += 1e6
    assert not rule.out_of_time()
    rule = StopRule(10, max_minutes=1.0, clock=clock)
    rule.start(clock.t - 61.0)
    assert rule.elapsed_s == 61.0 and rule.out_of_time()


def test_stop_rule_state_resumes_the_same_decisions():
    a = StopRule(100, patience=3)
    for step, v in enumerate([1.0, 0.5, 0.6, 0.7], start=1):
        a.record(step, v)
    state = json.loads(json.dumps(a.state_dict()))
    b = StopRule(100, patience=3)
    b.load_state_dict(state)
    assert (b.best, b.best_step, b.stale, b.reason) == (0.5, 2, 2, None)
    assert not a.record(5, 0.55) and not b.record(5, 0.55) and a.stopped and b.stopped
    fresh = StopRule(100)
    fresh.load_state_dict(StopRule(100).state_dict())
    assert math.isinf(fresh.best)


def test_stop_rule_errors_name_the_argument():
    with pytest.raises(ValueError, match="max_steps"):
        StopRule(0)
    with pytest.raises(ValueError, match="patience"):
        StopRule(10, patience=0)
    with pytest.raises(ValueError, match="min_rel_improvement"):
        StopRule(10, min_rel_improvement=1.0)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_cards_read_through_compat_unchanged(weights_dir):
    before = {p.name: _sha(p) for p in weights_dir.iterdir()}
    card = read_card(weights_dir / "fcunet.pt", "fcunet")
    assert isinstance(card, ModelCard) and isinstance(card, dict)
    assert (card.model, card.format) == ("fcunet", CARD_FORMATS["fcunet"])
    assert card.config == card["architecture"] and card.input["q_pixel_inv_A"] > 0
    assert card.metrics["mse"] > 0 and card.path == weights_dir / "fcunet.json"
    # the recorded command names the recipes' old folder; the card's text is left as shipped
    assert "src/distill4d/train/configs/" in card["training"]["command"]
    assert "src/distill4d/ml/configs/fcunet_cpu_position.toml" in card.command
    config = card.command.split("--config ")[1].split()[0]
    assert (weights_dir.parents[2] / config).is_file()
    for name in ("conv4d_mixed", "linear_mos2"):
        phase = read_card(weights_dir / f"phase_{name}.json", "phase")
        assert phase.model == "phase" and phase.config == phase["config"]
        assert phase.metrics["held_out_pearson_r"] > 0 and phase.input["pad"] == phase["pad"]
        assert phase.command == phase["command"]
    assert read_card(weights_dir / "phase_linear_mixed.pt").model == "phase"  # any model
    assert {p.name: _sha(p) for p in weights_dir.iterdir()} == before


def test_card_errors_name_the_file_and_model(tmp_path, weights_dir):
    with pytest.raises(FileNotFoundError, match="model card"):
        read_card(tmp_path / "none.pt")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="a.json is not a phase model card \\(bad JSON"):
        read_card(tmp_path / "a.pt", "phase")
    (tmp_path / "b.json").write_text((weights_dir / "fcunet.json").read_text())
    with pytest.raises(ValueError, match="b.json is not a CC-ST-AE model card"):
        read_card(tmp_path / "b.pt", "ccstae")
    (tmp_path / "c.json").write_text(json.dumps({"format": "distill4d-weights-1", "model": "other"}))
    with pytest.raises(ValueError, match="c.json is not a model card"):
        read_card(tmp_path / "c.pt")
    (tmp_path / "d.json").write_text(json.dumps({"format": "distill4d-phase-1"}))
    with pytest.raises(ValueError, match="d.json is not a phase model card: KeyError"):
        read_card(tmp_path / "d.pt", "phase")
    with pytest.raises(ValueError, match="model must be one of"):
        read_card(tmp_path / "d.pt", "unet")


def test_fcunet_card_without_format_is_read_by_its_model_name(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"model": "fcunet", "architecture": {"size": 32},
                                                 "input": {"q_pixel_inv_A": 0.1}}))
    card = read_card(tmp_path / "m.pt", "fcunet")
    assert card.format == "distill4d-weights-1" and card.command is None and card.metrics == {}
    with pytest.raises(ValueError, match="is not an FCU-Net card: .*q_pixel_inv_A must be > 0"):
        (tmp_path / "n.json").write_text(json.dumps({"model": "fcunet", "architecture": {}, "input": {"q_pixel_inv_A": 0}}))
        read_card(tmp_path / "n.pt", "fcunet")


@pytest.mark.parametrize("shape, origin, scale, size", [
    ((48, 48), (24.3, 23.7), 2.0, 16),   # binned (box filter) and interpolated
    ((40, 52), (5.2, 47.1), 1.3, 16),    # grid partly off the detector
    ((48, 48), (24.5, 24.5), 3.4, 16),
    ((64, 64), (2.0, 60.0), 0.7, 32),    # finer than the input
    ((48, 48), (200.0, 24.0), 2.0, 16),  # grid entirely off the detector: zeros
])
def test_resample_patterns_matches_the_pattern_by_pattern_interpolation(shape, origin, scale, size):
    import numpy as np

    from distill4d.ml._common.resample import _resample_pixelwise, resample_patterns

    imgs = np.random.default_rng(0).random((7,) + shape).astype(np.float32)
    fast = resample_patterns(imgs, origin, scale, size)
    slow = _resample_pixelwise(imgs, origin, scale, size)
    assert fast.shape == slow.shape == (7, size, size) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)


def test_resample_patterns_keeps_nan_in_patterns_that_have_it():
    import numpy as np

    from distill4d.ml._common.resample import resample_patterns

    imgs = np.ones((3, 48, 48), np.float32)
    imgs[1, 24, 24] = np.nan  # inside the grid's reach
    imgs[2, 0, 0] = np.nan  # outside it (the grid spans pixels 8-40)
    out = resample_patterns(imgs, (24.0, 24.0), 2.0, 16)
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).any() and np.isfinite(out[2]).all()
    np.testing.assert_allclose(out[2], out[0])  # a bad pixel the grid never reads changes nothing


def test_axis_matrix_equals_scipy_ndimage():
    """The resampling matrices of ``resample_patterns`` are written in NumPy (no ``scipy.ndimage``
    import, about 0.4 CPU s); they equal the box filter + linear interpolation of ``scipy.ndimage``
    exactly (float32), grids inside, across and outside the detector."""
    import numpy as np
    from scipy import ndimage

    from distill4d.ml._common.resample import _axis_matrix

    def ref(n, origin, scale, size):
        eye = np.eye(n, dtype=np.float32)
        if scale > 1.5:
            eye = ndimage.uniform_filter1d(eye, int(round(scale)), axis=1, mode="constant")
        u = origin + (np.arange(size) - size // 2) * scale
        A = np.stack([ndimage.map_coordinates(eye[k], [u], order=1, mode="constant", cval=0.0) for k in range(n)], 1)
        used = np.flatnonzero(np.abs(A).sum(axis=0) > 0)
        i0, i1 = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
        return A[:, i0:i1], i0, i1

    rng = np.random.default_rng(0)
    for _ in range(150):
        n, size = int(rng.integers(8, 130)), int(rng.choice([8, 16, 32]))
        scale = float(rng.uniform(0.3, 1.5) if rng.random() < 0.5 else rng.uniform(1.5, 5.0))
        origin = float(rng.uniform(-5, n + 5))
        a, a0, a1 = _axis_matrix.__wrapped__(n, origin, scale, size)
        b, b0, b1 = ref(n, origin, scale, size)
        assert (a0, a1) == (b0, b1)
        np.testing.assert_array_equal(a, b)
