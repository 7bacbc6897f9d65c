"""Tests of training a crystal identifier on a library: ragged (bounded-memory) encoding, a library
read back from its cache, and a fit resumed from its parts."""

import tracemalloc

import numpy as np
import pytest

from distill4d import Distill4dError
from distill4d.identify.encode import encode_batch, encode_ragged
from distill4d.identify.models import CrystalIdentifier
from distill4d.identify.train import encode_library

PROTOS = ("Si", "Au", "NaCl", "Mg", "MoS2", "GaN")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    from distill4d.simulate.spots import spot_library

    cache = tmp_path_factory.mktemp("spots")
    kw = dict(prototypes=PROTOS, n_orientations=20, seed=0, excitation_error_inv_A=0.03, augment=True)
    built = spot_library([], cache_dir=cache, **kw)
    return built, cache, kw


def test_ragged_encoding_equals_the_padded_one(cached):
    lib = cached[0]
    old = encode_batch(lib.qx, lib.qy, lib.intensity, lib.counts)  # the whole library padded
    new = encode_library(lib)
    # the same terms, summed in the same order except where argpartition orders the strongest
    # spots of a wider padding differently: equal to rounding (measured 5.6e-16 at most on
    # 2400 patterns of the 5x library, 80 % of the rows bit for bit)
    np.testing.assert_allclose(new, old, rtol=1e-12, atol=1e-14)
    # small blocks (one pattern each at the limit) change nothing either
    small = encode_ragged(lib.spot_qx, lib.spot_qy, lib.spot_intensity, lib.counts, max_block_entries=1)
    np.testing.assert_allclose(small, old, rtol=1e-12, atol=1e-14)


def test_ragged_encoding_memory_follows_the_spots_not_the_longest_list():
    # 2000 patterns of 6 spots and one of 4000: padded, 2001 x 4000 entries; ragged, blocks
    rng = np.random.default_rng(0)
    counts = np.r_[np.full(2000, 6), 4000]
    n = int(counts.sum())
    qx, qy = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    it = rng.uniform(0.1, 1.0, n)
    tracemalloc.start()
    try:
        X = encode_ragged(qx, qy, it, counts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert X.shape == (2001, 150) and np.all(np.isfinite(X))
    padded_bytes = 2001 * 4000 * 8  # one padded float64 array of the old path: 64 MB
    assert peak < padded_bytes / 2, peak  # measured 8.6 MB (the one long pattern's block)


def test_ragged_encoding_bad_input_names_the_pattern():
    qx = np.array([0.3, 0.0, 0.4, 0.5, 0.6])
    qy = np.zeros(5)
    it = np.ones(5)
    with pytest.raises(Distill4dError, match="summing to 5"):
        encode_ragged(qx, qy, it, np.array([2, 2]))
    with pytest.raises(Distill4dError, match="flat arrays"):
        encode_ragged(qx[None], qy[None], it[None], np.array([5]))
    bad = qy.copy()
    bad[3] = np.nan
    with pytest.raises(Distill4dError, match="pattern 1 contain NaN"):
        encode_ragged(qx, bad, it, np.array([2, 3]))
    # pattern 1 holds only the direct beam (|g| = 0): named by its index in the whole list
    with pytest.raises(Distill4dError, match="pattern 1 has no spot left"):
        encode_ragged(qx, qy, it, np.array([1, 1, 3]), chunk=1)


def test_library_read_back_from_its_cache_is_the_same_and_compact(cached):
    from distill4d.simulate.spots import spot_library

    built, cache, kw = cached
    tracemalloc.start()
    try:
        again = spot_library([], cache_dir=cache, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for name in ("spot_qx", "spot_qy", "spot_intensity", "counts", "structure", "space_group", "cellpar"):
        np.testing.assert_array_equal(getattr(again, name), getattr(built, name))
    spot_bytes = 3 * 8 * built.spot_qx.size
    # reading: each structure's arrays once, then one concatenation (about 2x the spots); the old
    # path kept a copy of a structure's spots per pattern (20x here) and padded them all
    assert peak < 4 * spot_bytes + 2e5, (peak, spot_bytes)  # measured 0.28 MB; the old path 3.2 MB
    sub = built.subset([1, 4])
    qx, _, _, counts = built.padded(np.flatnonzero(np.isin(built.structure, [1, 4])))
    np.testing.assert_array_equal(sub.qx, qx)
    np.testing.assert_array_equal(sub.counts, counts)


def test_fit_resumes_from_its_parts(cached):
    lib = cached[0]
    X = encode_library(lib)
    y, sg, cp = lib.system[lib.structure], lib.space_group[lib.structure], lib.cellpar[lib.structure]
    kw = dict(n_estimators=8, min_samples_leaf=3, seed=0, max_depth=8)
    state, done = {}, []
    full = CrystalIdentifier(**kw).fit(X, y, sg, cp, state=state, callback=done.append)
    assert done[0] == "system" and "lattice/6" in done
    # drop the last part: a resumed fit refits it alone and predicts exactly as the first
    last = done[-1]
    partial = {k: v for k, v in state.items() if not k.startswith(last + "/")}
    again = []
    resumed = CrystalIdentifier(**kw).fit(X, y, sg, cp, state=partial, callback=again.append)
    assert again == [last]
    np.testing.assert_array_equal(resumed.predict_proba(X), full.predict_proba(X))
    np.testing.assert_array_equal(resumed.predict_lattice(X), full.predict_lattice(X))


def test_train_identifier_resumes_an_interrupted_fit(tmp_path):
    from distill4d.identify.train import IdentifyTrainConfig, build_library, train_identifier

    config = IdentifyTrainConfig(space_groups=(225, 194), n_structures=1, n_orientations=6, n_estimators=3,
                                 max_depth=6, system_classifier="forest", seed=0)
    lib = build_library(config)

    class Stop(Exception):
        pass

    def stop(message):
        if message.startswith("fitted space_group/"):
            raise Stop  # as a kill right after the first space-group forest was saved

    with pytest.raises(Stop):
        train_identifier(config, cache_dir=tmp_path, library=lib, callback=stop)
    saved = list(tmp_path.glob("fit_*.npz"))
    assert len(saved) == 1
    with np.load(saved[0]) as z:
        done = {k.rsplit("/", 1)[0] for k in z.files}
    assert "system" in done and any(d.startswith("space_group/") for d in done)
    said = []
    model, card = train_identifier(config, cache_dir=tmp_path, library=lib, callback=said.append)
    assert any(f"resuming the fit from {saved[0].name} ({len(done)} parts done)" in m for m in said)
    refitted = {m.split()[1] for m in said if m.startswith("fitted ")}
    assert refitted and not refitted & done  # only the parts not saved are fitted again
    assert not saved[0].exists()  # removed once the fit is complete
    ref, ref_card = train_identifier(config, library=lib)  # uninterrupted, no checkpoint
    X = np.abs(np.random.default_rng(0).normal(size=(20, 150))) + 0.1
    np.testing.assert_array_equal(model.predict_proba(X), ref.predict_proba(X))
    np.testing.assert_array_equal(model.predict_lattice(X), ref.predict_lattice(X))
    assert card["metrics"] == ref_card["metrics"]


def test_variant_library_labels_its_crystals_and_reads_back_from_its_cache(tmp_path):
    from distill4d.simulate.spots import SYSTEMS, spot_library, variant_library

    kw = dict(seed=2, excitation_error_inv_A=0.03, augment=True)
    lib = spot_library([14, 191], 2, 6, **kw)
    v = variant_library([14, 191], 2, [1, 2], n_variants=3, n_orientations=5, cache_dir=tmp_path, **kw)
    assert v.name.tolist() == [f"{lib.name[i]}/v{k}" for i in (1, 2) for k in range(3)]
    assert v.space_group.tolist() == [14] * 3 + [191] * 3
    assert [SYSTEMS[s] for s in v.system] == ["monoclinic"] * 3 + ["hexagonal"] * 3
    assert np.bincount(v.structure).tolist() == [5] * 6  # 5 patterns of every variant
    # each variant has its own cell: free lengths moved, within 25 %, from its parent's
    for k in range(6):
        parent = lib.cellpar[1 + k // 3]
        ratio = v.cellpar[k, :3] / parent[:3]
        assert np.all((ratio > 0.8 - 1e-9) & (ratio < 1.25 + 1e-9)) and not np.allclose(ratio, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["variants_00001.npz", "variants_00002.npz"]
    again = variant_library([14, 191], 2, [1, 2], n_variants=3, n_orientations=5, cache_dir=tmp_path, **kw)
    for name in ("spot_qx", "counts", "structure", "space_group", "cellpar", "name"):
        np.testing.assert_array_equal(getattr(again, name), getattr(v, name))
    with pytest.raises(Distill4dError, match="other arguments"):
        variant_library([14, 191], 2, [1], n_variants=2, n_orientations=5, cache_dir=tmp_path, **kw)
    with pytest.raises(Distill4dError, match="indices"):
        variant_library([14, 191], 2, [4], n_variants=2, **kw)


def test_train_identifier_adds_variants_of_the_training_structures_only():
    from distill4d.identify.train import IdentifyTrainConfig, train_identifier

    config = IdentifyTrainConfig(space_groups=(225, 194, 62), n_structures=4, n_orientations=6, n_variants=2,
                                 variant_orientations=3, n_estimators=3, max_depth=6, system_classifier="forest",
                                 prototypes=False, seed=0)
    said = []
    model, card = train_identifier(config, callback=said.append)
    lib = card["library"]
    # 9 training structures (a quarter of each system's 4 held out), 2 variants each, 3 patterns each
    assert lib["train_structures"] == 9 and lib["variant_patterns"] == 9 * 2 * 3
    assert any(m.startswith("variants: 54 patterns of 18 variants") for m in said)
    assert card["config"]["n_variants"] == 2
    with pytest.raises(Distill4dError, match="n_variants"):
        IdentifyTrainConfig(n_variants=-1)


def test_cli_train_identify_with_variants(tmp_path, capsys):
    import json

    from distill4d.cli import main

    out = tmp_path / "m.npz"
    args = ["train", "identify", "--out", str(out), "--structures", "1", "--space-groups", "225", "194",
            "--orientations", "6", "--variants", "1", "--variant-orientations", "3", "--zone-variants", "1",
            "--zone-orientations", "2", "--zone-tail", "--trees", "3", "--max-depth", "6", "--system-classifier", "forest"]
    assert main(args) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["config"]["n_variants"] == 1 and card["config"]["variant_orientations"] == 3
    assert card["config"]["n_zone_variants"] == 1 and card["config"]["zone_orientations"] == 2 and card["config"]["zone_tail"]
    n_train = card["library"]["train_structures"]
    assert 0 < card["library"]["variant_patterns"] <= 3 * n_train
    assert main(args) == 1  # the model exists: not overwritten without --force
    assert "exists" in capsys.readouterr().err


def test_zone_variants_sit_beside_the_plain_ones_and_train():
    from distill4d.identify.train import IdentifyTrainConfig, train_identifier
    from distill4d.simulate.spots import variant_library

    v = variant_library([225, 194], 1, [0, 1], n_variants=2, n_orientations=0, n_zone_orientations=4, seed=2,
                        excitation_error_inv_A=0.03, augment=True)
    assert np.bincount(v.structure).max() <= 4 and len(v) >= 12  # 4 zone patterns per variant (a few may be too sparse)
    config = IdentifyTrainConfig(space_groups=(225, 194, 62), n_structures=4, n_orientations=6, n_variants=1,
                                 variant_orientations=3, n_zone_variants=2, zone_orientations=3, n_estimators=3,
                                 max_depth=6, system_classifier="forest", prototypes=False, seed=0)
    said = []
    _, card = train_identifier(config, callback=said.append)
    assert card["library"]["variant_patterns"] == 9 * 1 * 3
    assert 0 < card["library"]["zone_variant_patterns"] <= 9 * 2 * 3
    assert any(m.startswith("zone-axis variants:") for m in said)
    with pytest.raises(Distill4dError, match="zone_orientations"):
        IdentifyTrainConfig(zone_orientations=0)


def test_zone_tail_variants_add_the_weak_spots(tmp_path):
    from distill4d.simulate.spots import variant_library

    kw = dict(n_variants=2, n_orientations=0, n_zone_orientations=4, seed=2, excitation_error_inv_A=0.03)
    plain = variant_library([225], 1, [0], cache_dir=tmp_path, **kw)
    tail = variant_library([225], 1, [0], zone_tail=True, cache_dir=tmp_path, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zonetailvariants_00000.npz", "zonevariants_00000.npz"]
    # one random stream: the first variant is the same crystal seen the same way, with weak spots added
    np.testing.assert_array_equal(tail.cellpar[0], plain.cellpar[0])
    first_t, first_p = tail.counts[tail.structure == 0], plain.counts[plain.structure == 0]
    assert first_t.size == first_p.size and np.all(first_t >= first_p) and first_t.sum() > first_p.sum()
