"""The ``distill4d`` command line: a thin layer over the Python API.

Every command that computes something writes HDF5 (with units) atomically, refuses to
overwrite an existing output without ``--force``, and keeps finished chunks in
``OUTPUT.partial/`` so that an interrupted run resumes when the same command is run again.

One module per command group (:mod:`.imaging`: info, virtual, com; :mod:`.strain`: disks,
strain; :mod:`.phase`: phase, train phase; :mod:`.ptycho`: ptycho; :mod:`.train`: train fcunet;
:mod:`.identify`: identify, train identify; :mod:`.simulate`; :mod:`.demo`), each with an
``add_parser(sub)`` hook (``add_train_parser(tsub)`` for the models of ``distill4d train``); what
they share is in :mod:`._common`. This module assembles
them. Bad input (:class:`~distill4d.Distill4dError`) and file errors are one line on stderr;
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .._version import __version__
from . import demo, identify, imaging, phase, ptycho, segment, serve, simulate, strain, train
from ._common import execute, run_command

__all__ = ["build_parser", "execute", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``distill4d`` command (also used to generate its documentation)."""
    parser = argparse.ArgumentParser(
        prog="distill4d", description="4D-STEM data to images, strain maps and more.",
        epilog="Input FILE may name a dataset inside an HDF5 file as FILE.h5:/path/to/data.",
    )
    parser.add_argument("--version", action="version", version=f"distill4d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    imaging.add_parser(sub)
    strain.add_parser(sub)
    phase.add_parser(sub)
    ptycho.add_parser(sub)
    simulate.add_parser(sub)
    segment.add_parser(sub)
    identify.add_parser(sub)
    p = sub.add_parser("train", help="train a model: fcunet (on a simulated library), phase (on a scan and a label image), identify (on simulated spot lists)")
    tsub = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    train.add_train_parser(tsub)
    phase.add_train_parser(tsub)
    identify.add_train_parser(tsub)
    demo.add_parser(sub, main)
    serve.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distill4d`` command (``argv`` None: ``sys.argv``, the command itself)."""
    args = build_parser().parse_args(argv)
    rc = run_command(args)
    if argv is None:
        # the process ends with the command: the interpreter's last garbage collections would walk every
        # object PyTorch made (about 0.3 CPU s measured); frozen, they are left to the process's exit
        import gc

        gc.freeze()
    return rc

