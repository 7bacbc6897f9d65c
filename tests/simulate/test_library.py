"""Simulation library: deterministic, resumable, lazily readable; the PyTorch dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("abtem")
h5py = pytest.importorskip("h5py")

from distill4d.simulate import library as lib_mod  # noqa: E402
from distill4d.simulate.library import Library, LibraryConfig, build_library, sample_spec  # noqa: E402

SMALL = dict(
    n_samples=3,
    shard_size=1,
    shape=(48, 48),
    q_pixel_inv_A=0.05,
    thickness_A=(10.0, 40.0),
    n_thicknesses=2,
    prototypes=("Si", "Cu", "MgO"),
    energies_kV=(200.0,),
    semiangle_mrad=(2.0, 3.0),
    seed=7,
)


def _read_all(folder):
    out = {}
    for p in sorted(folder.glob("shard_*.h5")):
        with h5py.File(p, "r") as f:
            out[p.name] = {k: f[k][()] for k in f if k != "seconds"}
    return out


def _same(a, b):
    """Same entries: metadata and peak lists exactly; images to float32 round-off.

    FFTW's results depend on the memory alignment of its arrays at the round-off level
    (1e-18 of a pattern whose total is 1), so two builds agree bit for bit only when their
    buffers happen to be aligned alike.
    """
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for k in a[name]:
            x, y = a[name][k], b[name][k]
            if k in ("patterns", "probes"):
                assert np.allclose(x, y, rtol=0, atol=1e-6 * np.abs(x).max()), (name, k)
            else:
                assert np.array_equal(x, y), (name, k)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lib") / "a"
    summary = build_library(LibraryConfig(**SMALL), folder, scheduler="inline", progress=False)
    return folder, summary


def test_sample_specs_depend_on_seed_and_index_only():
    a = LibraryConfig(**SMALL)
    b = LibraryConfig(**{**SMALL, "shard_size": 2, "n_samples": 10})
    assert [sample_spec(a, i) for i in range(3)] == [sample_spec(b, i) for i in range(3)]
    c = LibraryConfig(**{**SMALL, "seed": 8})
    assert sample_spec(a, 0) != sample_spec(c, 0)


def test_library_entries_are_physical(built):
    folder, summary = built
    assert summary["complete"] and summary["shards_built"] == 3
    lib = Library(folder)
    meta = lib.metadata()
    # every sample is there, each with its thicknesses (two requests may share a cell count)
    assert set(meta["sample_index"].astype(int)) == {0, 1, 2}
    assert len(lib) == len(meta["sample_index"]) >= 3
    for e in lib:
        assert e["pattern"].shape == e["target"].shape == e["probe"].shape == (48, 48)
        assert 0.8 < e["pattern"].sum() <= 1.0 + 1e-4  # fraction of the beam, no absorption
        assert e["probe"].sum() == pytest.approx(1.0, abs=1e-3)
        # the (000) peak is listed at the origin with amplitude 1, and the target peaks there
        d = np.hypot(e["peaks"][:, 0] - 24, e["peaks"][:, 1] - 24)
        assert d.min() < 1e-4 and e["peaks"][np.argmin(d), 2] == pytest.approx(1.0)
        assert e["target"][24, 24] == pytest.approx(e["target"].max())
        assert e["crystal"] in SMALL["prototypes"]


def test_same_seed_same_library_and_resume_has_no_gaps(built, tmp_path, monkeypatch):
    folder, _ = built
    config = LibraryConfig(**SMALL)
    other = tmp_path / "b"
    # an interrupted build: the third sample fails; finished shards stay, nothing partial
    real = lib_mod.simulate_sample

    def failing(spec, cfg, **kw):
        if spec["index"] == 2:
            raise RuntimeError("simulated crash")
        return real(spec, cfg, **kw)

    monkeypatch.setattr(lib_mod, "simulate_sample", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_library(config, other, scheduler="inline", progress=False)
    names = sorted(p.name for p in other.iterdir())
    assert names == ["library.json", "shard_00000.h5", "shard_00001.h5"]
    assert len(Library(other)) == sum(1 for e in Library(folder) if e["sample_index"] < 2)
    monkeypatch.setattr(lib_mod, "simulate_sample", real)
    summary = build_library(config, other, scheduler="inline", progress=False)
    assert summary["shards_before"] == 2 and summary["shards_built"] == 1 and summary["complete"]
    # identical to the uninterrupted build, bit for bit: no duplicates, no gaps
    _same(_read_all(folder), _read_all(other))
    # a finished library is not rebuilt
    assert build_library(config, other, scheduler="inline", progress=False)["shards_built"] == 0


@pytest.mark.slow
def test_processes_give_the_same_library(built, tmp_path):
    folder, _ = built
    build_library(LibraryConfig(**SMALL), tmp_path / "p", scheduler="processes", n_workers=2, progress=False)
    _same(_read_all(folder), _read_all(tmp_path / "p"))
    with pytest.raises(ValueError, match="threads"):
        build_library(LibraryConfig(**SMALL), tmp_path / "t", scheduler="threads", progress=False)


def test_refuses_other_config_and_foreign_folder(built, tmp_path):
    folder, _ = built
    with pytest.raises(ValueError, match="another configuration"):
        build_library(LibraryConfig(**{**SMALL, "seed": 1}), folder, scheduler="inline", progress=False)
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_library(LibraryConfig(**SMALL), foreign, scheduler="inline", progress=False)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_config_file_and_validation(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('n_samples = 5\nshape = [64, 64]\nprototypes = ["Si"]\nthickness_A = [20, 200]\n')
    c = LibraryConfig.from_file(p)
    assert c.n_samples == 5 and c.shape == (64, 64) and c.prototypes == ("Si",)
    j = tmp_path / "c.json"
    j.write_text(json.dumps(c.to_dict()))
    assert LibraryConfig.from_file(j) == c
    with pytest.raises(ValueError, match="unknown library configuration keys"):
        LibraryConfig.from_dict({"n_sample": 3})
    with pytest.raises(ValueError, match="unknown prototypes"):
        LibraryConfig(prototypes=("Unobtainium",))
    with pytest.raises(ValueError, match="thickness_A"):
        LibraryConfig(thickness_A=(50.0, 10.0))


def test_torch_dataset_reads_lazily_and_augments_consistently(built):
    torch = pytest.importorskip("torch")
    from distill4d.simulate.augment import AugmentConfig
    from distill4d.ml.fcunet.data import LibraryDataset

    folder, _ = built
    plain = LibraryDataset(folder)
    item = plain[0]
    assert item["pattern"].shape == (48, 48) and item["pattern"].dtype == torch.float32
    assert float(item["probe"].max()) == pytest.approx(1.0)  # scaled by the probe maximum
    cfg = AugmentConfig(dose_e=None, bad_pixel_probability=0.0, plasmon_fraction=(0.0, 0.0), intensity_factor=(1.0, 1.0))
    aug = LibraryDataset(folder, augment=cfg, seed=3)
    a, b = aug[1], aug[1]
    assert torch.equal(a["pattern"], b["pattern"])  # seeded
    aug.set_epoch(1)
    assert not torch.equal(a["pattern"], aug[1]["pattern"])  # a new epoch draws anew
    # geometry: the target's brightest spot follows the (000) peak of the augmented list
    t = a["target"].numpy()
    pk = a["peaks"][: a["n_peaks"]].numpy()
    zero = pk[np.argmax(pk[:, 2])]
    i, j = np.unravel_index(np.argmax(t), t.shape)
    assert abs(i - zero[0]) <= 1 and abs(j - zero[1]) <= 1
    loader = torch.utils.data.DataLoader(aug, batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert batch["pattern"].shape == (2, 48, 48) and batch["peaks"].shape == (2, 512, 3)
