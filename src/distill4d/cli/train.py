"""``distill4d train fcunet`` (on a simulated library); needs ``distill4d[ml]``.

``distill4d train phase`` is in :mod:`distill4d.cli.phase`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import Distill4dError
from ._common import command_line, require_torch

__all__ = ["add_train_parser", "cmd_train_fcunet"]


def _train_config(args: argparse.Namespace) -> Any:
    from .._validate import read_mapping_file
    from ..ml.fcunet.model import FCUNetConfig
    from ..ml.fcunet.train import FCUNetTrainConfig

    base = read_mapping_file(args.config, "training configuration") if args.config else {}
    model = base.pop("model", {})
    if not isinstance(model, dict):
        raise Distill4dError(f"{args.config}: [model] must be a table of architecture settings, got {model!r}")
    model = dict(model)
    for key in ("filters", "depth", "dropout", "pool", "equivariant"):
        v = getattr(args, key)
        if v is not None:
            model[key] = v
    for key, attr in (("batch_size", "batch_size"), ("max_steps", "steps"), ("lr", "lr"),
                      ("max_minutes", "minutes"), ("num_workers", "loader_workers"), ("seed", "seed"),
                      ("augment_on", "augment_on"), ("in_memory", "in_memory")):
        v = getattr(args, attr)
        if v is not None:
            base[key] = v
    base["model"] = FCUNetConfig.from_dict(model)
    return FCUNetTrainConfig.from_dict(base)


def cmd_train_fcunet(args: argparse.Namespace) -> int:
    require_torch("training")
    from ..ml.fcunet.train import train_fcunet

    cfg = _train_config(args)
    if args.threads is not None:  # checked (>= 1) before the command ran
        import torch

        torch.set_num_threads(args.threads)
    card = train_fcunet(args.library, args.out, cfg, init=args.init, device=args.device, force=args.force,
                        command=command_line())
    if not card.get("complete"):
        print(f"stopped at step {card['step']} (time limit); run the same command to go on")
    return 0


def add_train_parser(tsub: Any) -> None:
    """Add ``fcunet`` to the models of ``distill4d train`` (``tsub``)."""
    t = tsub.add_parser("fcunet", help="FCU-Net: CBED pattern + probe -> structure-factor image (Bragg disks)")
    t.add_argument("--library", required=True, help="library folder (distill4d simulate library)")
    t.add_argument("--out", required=True, help="weights file to write (.pt); the model card goes beside it (.json)")
    t.add_argument("--config", help="training configuration (TOML or JSON; keys of FCUNetTrainConfig)")
    t.add_argument("--filters", type=int, help="complex filters of the first level")
    t.add_argument("--depth", type=int, help="pooling levels")
    t.add_argument("--dropout", type=float, help="Monte-Carlo dropout probability")
    t.add_argument("--pool", choices=("max", "spectral"), help="pooling")
    t.add_argument("--equivariant", action="store_true", default=None,
                   help="phase-equivariant complex layers (modReLU, magnitude norm and pooling, no complex bias)")
    t.add_argument("--batch-size", type=int, help="patterns per optimiser step (default: the configuration's, 16)")
    t.add_argument("--steps", type=int, help="optimiser steps in total (the schedule's length)")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--minutes", type=float, help="stop after this many minutes (rerun to resume)")
    t.add_argument("--loader-workers", type=int, help="data-loading worker processes")
    t.add_argument("--threads", type=int, help="PyTorch CPU threads")
    t.add_argument("--in-memory", action="store_true", default=None,
                   help="hold the training split in memory instead of reading each item from the files")
    t.add_argument("--augment-on", choices=("loader", "device"),
                   help="augment in the data loader (NumPy, CPU) or each batch on the training device (GPU)")
    t.add_argument("--seed", type=int, help="shuffling, augmentation and initialisation seed "
                   "(default: the configuration's, 0)")
    t.add_argument("--device", default="auto", help="auto (default: GPU if PyTorch sees one), cpu or cuda")
    t.add_argument("--init", help="start from these weights (same architecture; fresh optimiser and schedule)")
    t.add_argument("--force", action="store_true", help="overwrite existing weights of that name")
    t.set_defaults(func=cmd_train_fcunet)
