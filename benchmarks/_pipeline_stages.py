#!/usr/bin/env python3
"""Run ``distill4d phase ... --train-on-ptycho ...`` or ``distill4d ptycho ...`` (the arguments after the
first, which names a JSON file to write) in this process, with the process CPU seconds of each stage of the pipeline:
``start-up`` (interpreter, ``import distill4d.cli``), ``import torch``, ``read`` (opening the scan),
``ptychography`` (of the block), ``training`` (preparing the block's patterns and the optimiser steps),
``save model``, ``inference`` (the model on the whole scan), ``write`` (the image file), ``other`` (the rest
of the command: argument parsing, checks, clean-up). Used by ``ptycho_benchmark.py``; one thread.

The stages are timed by wrapping the functions the command calls (no change to distill4d); the
start-up is the process's CPU time before this module's first line, plus the import. ``cli.main`` is
called as the ``distill4d`` console script calls it (no arguments: it reads ``sys.argv``)."""

from __future__ import annotations

import json
import resource
import sys
import time


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    stages: dict[str, float] = {}
    c_begin = _cpu()  # the interpreter's own start-up
    import distill4d.cli as cli  # noqa: E402

    stages["start-up"] = _cpu()
    c = _cpu()
    import torch

    torch.set_num_threads(1)
    stages["import torch"] = _cpu() - c

    import distill4d.cli.phase as cli_phase
    import distill4d.cli.ptycho as cli_ptycho
    import distill4d.ml.phase.infer as infer
    import distill4d.ml.phase.train as train
    import distill4d.phase as phase
    from distill4d.results import Results

    def timed(name, fn):
        def wrapper(*a, **k):
            c0 = _cpu()
            try:
                return fn(*a, **k)
            finally:
                stages[name] = stages.get(name, 0.0) + _cpu() - c0
        return wrapper

    cli_phase.open_input = timed("read", cli_phase.open_input)
    cli_ptycho.open_input = timed("read", cli_ptycho.open_input)
    phase.reconstruct = timed("ptychography", phase.reconstruct)
    train.train_phase = timed("training", train.train_phase)
    train.save_phase_model = timed("save model", train.save_phase_model)
    infer.phase_image = timed("inference", infer.phase_image)
    Results.to_h5 = timed("write", Results.to_h5)
    c0 = _cpu()
    sys.argv = ["distill4d", *argv]
    rc = cli.main()  # as the console script calls it (argv from sys.argv)
    total = _cpu()
    inner = sum(v for k, v in stages.items() if k not in ("start-up", "import torch"))
    stages["other"] = total - c0 - inner
    stages = {k: round(v, 3) for k, v in stages.items()}
    with open(out, "w") as f:
        json.dump({"stages_cpu_s": stages, "total_cpu_s": round(total, 3), "before_python_cpu_s": round(c_begin, 3),
                   "wall_clock": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}, f, indent=1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
