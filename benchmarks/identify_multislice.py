#!/usr/bin/env python3
"""Crystal identification on multislice patterns of real materials, 20-50 nm thick, end to end.

The shipped identifier (:func:`distill4d.identify.load_default`) was trained on kinematic spot
lists (random orientations, and zone-axis variants). This benchmark asks what it does on what a
microscope records:

- **materials**: the ASE prototypes of :mod:`distill4d.simulate.crystals` (some were in the
  model's training library, some in its held-out quarter: ``--library`` names the card's library
  folder so that each is labelled) and real materials never in the library
  (:data:`EXTRA`: rutile, anatase, corundum, ZnO, Bi, Te, alpha-U, black phosphorus, ZrO2,
  beta-Ga2O3, beta-Sn, In, Cr, Ni, NiO, CaF2, ZnS, Co, Zr, AlN), each checked by spglib;
- **patterns**: abTEM multislice (:func:`distill4d.simulate.multislice.simulate_cbed`), 200 kV,
  a 1.5 mrad nanobeam, 256 x 256 pixels of 0.0125 1/Å, thicknesses 200, 350 and 500 Å (one
  propagation), along the material's first ``--zones`` low-index zone axes, on zone and tilted
  by ``--tilt-mrad`` in a direction drawn per zone (seeded), Poisson noise at ``--dose`` e⁻ per
  pattern;
- **end to end**: each material's patterns form one DataCube; :func:`distill4d.identify.identify`
  finds the disks with the automatic detector (and the simulated vacuum probe), encodes them and
  predicts; the aggregate is over all the material's patterns (log-probabilities);
- **kinematic row**: the same orientations as kinematic spot lists as the library makes them
  (:func:`distill4d.simulate.spots.spot_patterns`, excitation error 0.03 1/Å, |g| <= 1.5 1/Å,
  not augmented), which separates what multislice and detection cost from what the model
  cannot do on these crystals at all.

Simulations are kept in ``--cache`` (one file per material and zone; a rerun reuses them).
Prints one JSON object; writes the ``identify_multislice`` section of RESULTS.md unless
``--no-results``.

    PYTHONPATH=src python benchmarks/identify_multislice.py --cache CACHE --library LIB

``LIB``: the library folder of the shipped card's command (``distill4d train identify --cache LIB``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, write_section  # noqa: E402

from distill4d import DataCube
from distill4d._ragged import pad_rows
from distill4d.identify import identify, load_default
from distill4d.identify.apply import predict_spots
from distill4d.identify.models import SYSTEMS, aggregate
from distill4d.lattice.auto import find_bragg_disks_auto
from distill4d.simulate.crystals import crystal_system, list_prototypes, orient, prototype, spacegroup_number, zone_axes
from distill4d.simulate.multislice import CBEDSettings, simulate_cbed
from distill4d.simulate.spots import spot_patterns

#: Real materials not in the library: name -> (builder arguments for ase.spacegroup.crystal or a
#: prototype with overrides, expected space group).
EXTRA = {
    "rutile TiO2": (dict(symbols=["Ti", "O"], basis=[(0, 0, 0), (0.3053, 0.3053, 0)], spacegroup=136,
                         cellpar=[4.594, 4.594, 2.959, 90, 90, 90]), 136),
    "anatase TiO2": (dict(symbols=["Ti", "O"], basis=[(0, 0, 0), (0, 0, 0.2081)], spacegroup=141,
                          cellpar=[3.785, 3.785, 9.514, 90, 90, 90]), 141),
    "corundum Al2O3": (dict(symbols=["Al", "O"], basis=[(0, 0, 0.3523), (0.3064, 0, 0.25)], spacegroup=167,
                            cellpar=[4.759, 4.759, 12.991, 90, 90, 120]), 167),
    "Bi": (dict(symbols=["Bi"], basis=[(0, 0, 0.2339)], spacegroup=166, cellpar=[4.546, 4.546, 11.862, 90, 90, 120]),
           166),
    "Te": (dict(symbols=["Te"], basis=[(0.2636, 0, 1 / 3)], spacegroup=152, cellpar=[4.457, 4.457, 5.929, 90, 90, 120]),
           152),
    "alpha-U": (dict(symbols=["U"], basis=[(0, 0.1025, 0.25)], spacegroup=63, cellpar=[2.854, 5.870, 4.955, 90, 90, 90]),
                63),
    "black P": (dict(symbols=["P"], basis=[(0, 0.10168, 0.08056)], spacegroup=64,
                     cellpar=[3.3136, 10.478, 4.3763, 90, 90, 90]), 64),
    "ZrO2 (baddeleyite)": (dict(symbols=["Zr", "O", "O"],
                                basis=[(0.2754, 0.0395, 0.2083), (0.0700, 0.3317, 0.3447), (0.4496, 0.7569, 0.4792)],
                                spacegroup=14, cellpar=[5.150, 5.212, 5.317, 90, 99.23, 90]), 14),
    "beta-Ga2O3": (dict(symbols=["Ga", "Ga", "O", "O", "O"],
                        basis=[(0.0904, 0, 0.7948), (0.3414, 0, 0.6857), (0.1674, 0, 0.1011), (0.4957, 0, 0.2553),
                               (0.8279, 0, 0.4365)], spacegroup=12, cellpar=[12.214, 3.0371, 5.7981, 90, 103.83, 90]),
                   12),
    "beta-Sn": (dict(symbols=["Sn"], basis=[(0, 0, 0)], spacegroup=141, cellpar=[5.832, 5.832, 3.182, 90, 90, 90]),
                141),
    "In": (dict(symbols=["In"], basis=[(0, 0, 0)], spacegroup=139, cellpar=[3.252, 3.252, 4.946, 90, 90, 90]), 139),
    "ZnO": (("GaN", dict(elements=["Zn", "O"], a=3.250, c=5.207, u=0.3825)), 186),
    "AlN": (("GaN", dict(elements=["Al", "N"], a=3.112, c=4.982, u=0.3821)), 186),
    "Co": (("Mg", dict(elements=["Co"], a=2.507, c=4.070)), 194),
    "Zr": (("Mg", dict(elements=["Zr"], a=3.232, c=5.147)), 194),
    "Cr": (("Fe", dict(elements=["Cr"], a=2.885)), 229),
    "Ni": (("Cu", dict(elements=["Ni"], a=3.524)), 225),
    "NiO": (("MgO", dict(elements=["Ni", "O"], a=4.177)), 225),
    "CaF2": (("CeO2", dict(elements=["Ca", "F"], a=5.463)), 225),
    "ZnS": (("GaAs", dict(elements=["Zn", "S"], a=5.409)), 216),
}

THICKNESSES_A = (200.0, 350.0, 500.0)


def build(name: str):
    """``(atoms, space group)`` of a material of this benchmark (prototype or :data:`EXTRA`)."""
    from ase.spacegroup import crystal

    if name in list_prototypes():
        atoms = prototype(name)
        return atoms, spacegroup_number(atoms)
    spec, expected = EXTRA[name]
    atoms = prototype(spec[0], **spec[1]) if isinstance(spec, tuple) else crystal(**spec, primitive_cell=False)
    sg = spacegroup_number(atoms)
    if sg != expected:
        raise SystemExit(f"{name}: spglib finds space group {sg}, expected {expected}")
    return atoms, sg


def _tilt_matrix(tx: float, ty: float) -> np.ndarray:
    """Rotation of the crystal by small angles tx about y and ty about x (rad)."""
    cy, sy, cx, sx = np.cos(tx), np.sin(tx), np.cos(ty), np.sin(ty)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return Rx @ Ry


def simulate_material(name: str, atoms, zones: int, tilt_mrad: float, cache: Path, seed: int) -> list[dict]:
    """The multislice patterns of one material, one dict per (zone, tilt), cached per zone."""
    out = []
    axes = zone_axes(atoms, 1)
    done = 0
    for zi, zone in enumerate(axes):
        if done == zones:
            break
        f = cache / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}_{''.join(map(str, zone))}.npz"
        if f.exists():
            z = np.load(f)
            out += [{"zone": zone, "tilt_mrad": z["tilts"][i], "patterns": z["patterns"][i], "probe": z["probe"],
                     "thicknesses_A": z["thicknesses_A"], "rotation": z["rotations"][i]} for i in range(len(z["tilts"]))]
            done += 1
            continue
        try:
            oriented, info = orient(atoms, zone)
        except ValueError:
            continue
        if len(oriented) > 400:
            continue
        rng = np.random.default_rng([seed, zi, sum(map(ord, name))])
        phi = rng.uniform(0, 2 * np.pi)
        tilts = [(0.0, 0.0), (tilt_mrad * np.cos(phi), tilt_mrad * np.sin(phi))]
        pats, rots, probe, thick = [], [], None, None
        for t in tilts:
            s = CBEDSettings(energy_eV=200e3, semiangle_mrad=1.5, shape=(256, 256), q_pixel_inv_A=0.0125,
                             thicknesses_A=THICKNESSES_A, tilt_mrad=t)
            r = simulate_cbed(oriented, s, device="cpu")
            pats.append(r.patterns)
            probe, thick = r.probe, r.thicknesses_A
            # the beam tilted by t sees the crystal rotated by -t (small angles)
            rots.append(_tilt_matrix(-t[0] * 1e-3, -t[1] * 1e-3) @ info["orthogonalization_F"] @ info["rotation"])
        np.savez_compressed(f, patterns=np.asarray(pats), probe=probe, thicknesses_A=thick, tilts=np.asarray(tilts),
                            rotations=np.asarray(rots))
        out += [{"zone": zone, "tilt_mrad": np.asarray(tilts[i]), "patterns": pats[i], "probe": probe,
                 "thicknesses_A": thick, "rotation": rots[i]} for i in range(len(tilts))]
        done += 1
    return out


def _card_config() -> dict:
    """The shipped identifier's training configuration (its card's ``config``)."""
    from distill4d.identify.apply import default_model_path

    return json.loads(Path(str(default_model_path())).with_suffix(".json").read_text())["config"]


def training_names(library: str | None) -> tuple[set, set]:
    """Names of the prototypes in the card's training and held-out structures."""
    if library is None:
        return set(), set()
    from distill4d.identify.train import IdentifyTrainConfig, build_library, split_by_structure

    config = IdentifyTrainConfig(**_card_config())
    lib = build_library(config, library)
    test = set(split_by_structure(lib.system, config.holdout, config.seed).tolist())
    protos = set(list_prototypes())
    names = [str(n) for n in lib.name]
    held = {n for i, n in enumerate(names) if n in protos and i in test}
    return {n for n in protos if n in names} - held, held


def evaluate(name, atoms, sg, sims, model, dose, rng) -> dict:
    system = SYSTEMS.index(crystal_system(sg))
    cellpar = atoms.cell.cellpar()
    patterns = np.concatenate([s["patterns"] for s in sims])  # (N, 256, 256)
    counts = rng.poisson(np.clip(patterns, 0, None) * dose).astype(np.float32)
    probe = sims[0]["probe"]
    s = CBEDSettings(energy_eV=200e3, semiangle_mrad=1.5, shape=(256, 256), q_pixel_inv_A=0.0125)
    dc = DataCube(counts[:, None], calibration=s.calibration())
    t0 = time.process_time()
    peaks = find_bragg_disks_auto(dc, probe)
    res = identify(peaks, model, aggregation="log")
    cpu = time.process_time() - t0
    disks = np.diff(np.asarray(peaks.offsets))  # the direct beam included
    ok = res.valid.ravel()
    pred = res.system.ravel()
    margin = aggregate(res.system_proba.reshape(-1, len(SYSTEMS))[ok], "margin") if ok.any() else None
    # the same orientations as kinematic spot lists (as the library makes them, not augmented)
    rots = np.concatenate([np.repeat(sm["rotation"][None], len(sm["patterns"]), 0) for sm in sims])
    thick = np.concatenate([sm["thicknesses_A"] for sm in sims])
    kin = spot_patterns(atoms, len(rots), rng=0, rotations=rots, excitation_error_inv_A=0.03, max_g_inv_A=1.5)
    n_kin = np.array([len(k[0]) for k in kin])
    (kqx, kqy, kit), _ = pad_rows([np.concatenate([k[c] for k in kin]) for c in range(3)],
                                   np.concatenate([[0], np.cumsum(n_kin)[:-1]]), n_kin)
    kp = predict_spots(kqx, kqy, kit, n_kin, model)
    kagg = aggregate(kp["system_proba"][kp["valid"]], "log") if kp["valid"].any() else None  # as identify() does
    lat = res.agg_lattice
    rel_abc = (np.abs(lat[:3] - cellpar[:3]) / cellpar[:3]).tolist() if lat is not None else None
    return {
        "material": name, "space_group": int(sg), "system": SYSTEMS[system],
        "zones": sorted({"".join(map(str, sm["zone"])) for sm in sims}), "patterns": int(len(patterns)),
        "thicknesses_A": [round(float(t)) for t in np.unique(np.round(thick))],
        "detector": str(peaks.params.get("method")),
        "disks_median": float(np.median(disks)),
        "identified": int(ok.sum()),
        "one_pattern": float(np.mean(pred[ok] == system)) if ok.any() else 0.0,
        "one_pattern_of_all": float(np.sum(pred[ok] == system) / len(patterns)),
        "aggregate_system": SYSTEMS[res.agg_system] if res.agg_system is not None else None,
        "aggregate_right": bool(res.agg_system == system),
        "aggregate_margin_right": bool(margin is not None and int(np.argmax(margin)) == system),
        "aggregate_space_group": int(res.agg_space_group[0]) if res.agg_space_group is not None else None,
        "space_group_right": bool(res.agg_space_group is not None and res.agg_space_group[0] == sg),
        "space_group_in_model": bool(sg in set(model.space_groups().tolist())),
        "lattice_abc": [round(float(x), 3) for x in lat[:3]] if lat is not None else None,
        "true_abc": [round(float(x), 3) for x in cellpar[:3]],
        "abc_rel_error_median": float(np.median(rel_abc)) if rel_abc else None,
        "kinematic_one_pattern": float(np.mean(kp["system"][kp["valid"]] == system)) if kp["valid"].any() else 0.0,
        "kinematic_aggregate_right": bool(kagg is not None and int(np.argmax(kagg)) == system),
        "kinematic_spots_median": float(np.median(kp["spots"])),
        "identify_cpu_s": round(cpu, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="folder of the simulations (reused when present)")
    ap.add_argument("--library", default=None, help="the shipped card's library folder (labels the prototypes)")
    ap.add_argument("--materials", nargs="*", default=None, help="default: every prototype and EXTRA")
    ap.add_argument("--zones", type=int, default=3, help="zone axes per material (lowest index first)")
    ap.add_argument("--tilt-mrad", type=float, default=10.0)
    ap.add_argument("--dose", type=float, default=1e5, help="e- per pattern")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simulate-only", action="store_true")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    names = args.materials or (list_prototypes() + list(EXTRA))
    trained, held = training_names(args.library)
    model = None if args.simulate_only else load_default()
    rows, skipped = [], []
    for i, name in enumerate(names):
        atoms, sg = build(name)
        t0 = time.perf_counter()
        sims = simulate_material(name, atoms, args.zones, args.tilt_mrad, cache, args.seed)
        print(f"{name}: {len(sims)} simulations ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        if not sims:
            skipped.append(name)
            continue
        if model is None:
            continue
        row = evaluate(name, atoms, sg, sims, model, args.dose, np.random.default_rng([args.seed, i]))
        row["in_library"] = "trained" if name in trained else "held out" if name in held else (
            "never" if name in EXTRA else "unknown")
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    if model is None:
        return
    print(json.dumps({"materials": rows, "not_simulated": skipped}, indent=1))
    if not args.no_results:
        write_section("identify_multislice", section(rows, skipped, args))


def _frac(rows: list[dict], key: str) -> str:
    return f"{np.mean([r[key] for r in rows]):.2f}" if rows else "-"


def _pooled(rows: list[dict], key: str) -> str:
    n = sum(r["patterns"] for r in rows)
    return f"{sum(r[key] * r['patterns'] for r in rows) / n:.2f}" if n else "-"


def section(rows: list[dict], skipped: list[str], args) -> str:
    cmd = "`benchmarks/identify_multislice.py --cache CACHE --library LIB"
    cmd += (f" --zones {args.zones}" if args.zones != 3 else "") + (f" --tilt-mrad {args.tilt_mrad:g}" if args.tilt_mrad != 10 else "")
    cmd += (f" --dose {args.dose:g}" if args.dose != 1e5 else "") + "`"
    L = ["## Crystal identification on multislice patterns of real materials (20-50 nm)", "",
         f"{cmd} (LIB: the library folder of the shipped card's command, which labels the prototypes).",
         machine_line(), "",
         "The shipped identifier (trained on kinematic spot lists, augmented: random orientations, and variants of the "
         "training structures near zone axes" + (", with the weak off-Ewald spots of a thick crystal" if _card_config().get(
             "zone_tail") else "") + ") on abTEM "
         "multislice nanobeam patterns: 200 kV, 1.5 mrad, 256 x 256 pixels of 0.0125 1/Å, thicknesses 200, 350 and "
         f"500 Å (rounded to whole cells), the first {args.zones} low-index zone axes of each material, on zone and "
         f"tilted {args.tilt_mrad:g} mrad (direction drawn per zone), Poisson noise at {args.dose:g} e⁻ per pattern; static "
         "lattice (no phonons). End to end: each material's patterns are one DataCube, its disks found by the automatic "
         "detector with the simulated vacuum probe, then `identify` (aggregate: sum of log-probabilities over all the "
         "material's patterns, the default; `margin`: the mean per-pattern margins instead). Kinematic: the same "
         "orientations as the library's kinematic spot lists (excitation "
         "error 0.03 1/Å, not augmented), which shows what the model does on these crystals without multislice and "
         "detection. In library: `trained` (a prototype among the card's training structures), `held out` (in its "
         "held-out quarter), `never` (not in the library: built here from published structures, space group checked "
         "by spglib). Space group counted only where the model knows the group."
         + (f" Not simulated (no low-index zone axis gives an orthogonal cell within 1 %, or one of under 400 "
            f"atoms): {', '.join(skipped)}." if skipped else ""), ""]
    groups = [("every material", rows), ("never in the library", [r for r in rows if r["in_library"] == "never"]),
              ("held-out prototypes", [r for r in rows if r["in_library"] == "held out"]),
              ("never or held out (unseen)", [r for r in rows if r["in_library"] in ("never", "held out")]),
              ("prototypes trained on", [r for r in rows if r["in_library"] == "trained"])]
    L += ["| materials | n | crystal system, one pattern (multislice, end to end) | system, aggregate | system, aggregate "
          "(margin) | space group, aggregate (known groups) | a, b, c median rel. error (aggregate) | kinematic: one "
          "pattern | kinematic: aggregate |",
          "|---|---|---|---|---|---|---|---|---|"]
    for label, rs in groups:
        known = [r for r in rs if r["space_group_in_model"]]
        abc = [r["abc_rel_error_median"] for r in rs if r["abc_rel_error_median"] is not None]
        L.append(f"| {label} | {len(rs)} | {_pooled(rs, 'one_pattern_of_all')} | {_frac(rs, 'aggregate_right')} | "
                 f"{_frac(rs, 'aggregate_margin_right')} | {_frac(known, 'space_group_right')} ({len(known)}) | "
                 f"{np.median(abc) if abc else float('nan'):.2f} | "
                 f"{_pooled(rs, 'kinematic_one_pattern')} | {_frac(rs, 'kinematic_aggregate_right')} |")
    L += ["", "One pattern: the fraction of all patterns whose crystal system is right (a pattern with fewer than 3 "
          "spots besides the direct beam counts as wrong), pooled over the materials.", "",
          "| material | system (space group) | in library | zones | patterns (identified) | disks per pattern "
          "(median, direct beam included) | one pattern | aggregate system | aggregate space group | a, b, c: "
          "aggregate / true (Å) | kinematic: one pattern / aggregate |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        abc = "/".join(f"{x:.2f}" for x in r["lattice_abc"]) if r["lattice_abc"] else "-"
        true = "/".join(f"{x:.2f}" for x in r["true_abc"])
        L.append(f"| {r['material']} | {r['system']} ({r['space_group']}) | {r['in_library']} | {' '.join(r['zones'])} | "
                 f"{r['patterns']} ({r['identified']}) | {r['disks_median']:.0f} | {r['one_pattern_of_all']:.2f} | "
                 f"{r['aggregate_system']}{'' if r['aggregate_right'] else ' (wrong)'} | {r['aggregate_space_group']}"
                 f"{'' if r['space_group_right'] else ' (wrong)'} | {abc} / {true} | "
                 f"{r['kinematic_one_pattern']:.2f} / {'right' if r['kinematic_aggregate_right'] else 'wrong'} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
