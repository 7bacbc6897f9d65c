"""``distill4d phase``: the figure names the model as the user chose it."""

import pytest

pytest.importorskip("torch")

import distill4d  # noqa: E402
from distill4d.cli import main  # noqa: E402


@pytest.mark.parametrize("model", ["conv4d-mixed", "linear"])
def test_phase_figure_title_names_the_chosen_model(tmp_path, monkeypatch, model):
    from distill4d.ml.phase.infer import PhaseImage
    from distill4d.simulate.phase_object import phase_object_scan

    titles = []
    monkeypatch.setattr(PhaseImage, "plot", lambda self, path, force=False, title="": titles.append(title))
    sim = phase_object_scan(scan_shape=(12, 12))
    scan = tmp_path / "po.h5"
    distill4d.write(scan, sim.datacube)
    assert main(["phase", str(scan), "--model", model, "-o", str(tmp_path / "p.h5"), "--no-progress"]) == 0
    assert len(titles) == 1 and f"({model})" in titles[0] and "po.h5" in titles[0]
