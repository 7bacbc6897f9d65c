"""The shipped phase-retrieval weights (trained on a simulated MoS2 field) on a MoS2 field they
never saw: a smaller cell with S vacancies, another dose and noise seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("abtem")

from distill4d.imaging import detector_mask, virtual_image  # noqa: E402
from distill4d.ml.phase_fit import phase_image, shipped_phase_weights  # noqa: E402
from distill4d.simulate.realspace import (  # noqa: E402
    apply_dose,
    mos2_monolayer,
    simulate_realspace_scan,
)


@pytest.fixture(scope="module")
def field():
    atoms = mos2_monolayer(repeats=(2, 2), vacancy_fraction=0.1, seed=7)
    dc, labels = simulate_realspace_scan(atoms, energy_eV=80e3, semiangle_mrad=25.0, scan_step_A=0.25,
                                         detector_shape=48, num_workers=2)
    return apply_dose(dc, 5e4, seed=11), labels["projected_potential"]


@pytest.mark.parametrize("model", ["linear", "conv4d"])
def test_shipped_weights_beat_adf_on_an_unseen_field(field, model):
    dc, truth = field
    card = json.loads(shipped_phase_weights(model).with_suffix(".json").read_text())
    assert card["command"].startswith("benchmarks/phase_benchmark.py") and "metrics" in card
    img = phase_image(dc, model, scheduler="inline", progress=False)
    assert img.units == "V·Å" and img.image.shape == truth.shape
    adf = virtual_image(dc, detector_mask(dc, "adf", None), progress=False)
    r_model = np.corrcoef(img.image.ravel(), truth.ravel())[0, 1]
    r_adf = np.corrcoef(adf.ravel(), truth.ravel())[0, 1]
    # measured: linear r 0.882, conv4d r 0.998, ADF r 0.845; slopes 0.85 and 1.12
    assert r_model > r_adf, (r_model, r_adf)
    # in V·Å: the model's image fits the truth with a slope near 1
    slope = np.polyfit(truth.ravel(), img.image.ravel(), 1)[0]
    assert 0.5 < slope < 1.5, slope
