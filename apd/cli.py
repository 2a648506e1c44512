"""`apd`: one command with subcommands; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from apd.errors import ApdError, ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (no usage block) with exit 2, like all bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _decompose(args: argparse.Namespace) -> int:
    from apd.config import check_output_dir, load_config, parse_overrides
    from apd.run import run_decomposition

    cfg = load_config(args.experiment, parse_overrides(args.set))
    if args.checkpoint_every is not None and args.checkpoint_every % cfg.log_every:
        # checkpoints are taken at records: another interval would silently become a multiple of both
        raise ConfigError(
            f"--checkpoint-every: must be a multiple of log_every ({cfg.log_every}) (got {args.checkpoint_every})"
        )
    name = Path(args.experiment).stem
    out = Path(args.out) if args.out else Path("runs") / f"{name}-seed{cfg.seed}"
    check_output_dir(out)
    checkpoint = out / "checkpoint.pt"
    if (out / "metrics.json").exists():
        raise ConfigError(f"{out}: already holds a finished run; choose another --out")
    if checkpoint.exists() and not args.resume:
        raise ConfigError(f"{out}: holds an unfinished run; pass --resume to continue it or choose another --out")
    result = run_decomposition(
        cfg, out, checkpoint_path=checkpoint, checkpoint_every=args.checkpoint_every, progress=not args.quiet
    )
    if result.status == "finished":
        checkpoint.unlink(missing_ok=True)
    print(summary(result.metrics, out))
    return 0 if result.status == "finished" else 1


def summary(metrics: dict, out: Path) -> str:
    """One line of the run's main numbers: status, losses, its family's metrics, the verdict."""
    from apd.metrics.keys import family_kind
    from apd.targets.registry import FAMILIES

    family = FAMILIES.get(family_kind(metrics)) if "identity_error" in metrics else None
    keys = (
        "status",
        "steps_done",
        "total_loss",
        "faithfulness_loss",
        "topk_recon_loss",
        *(family.summary_keys if family is not None else ()),
        "identity_error",
        "recovered",
    )
    parts = [f"{k}={_fmt(metrics[k])}" for k in keys if metrics.get(k) is not None]
    if metrics.get("error"):
        parts.append(f"error: {metrics['error']}")
    return "  ".join(parts) + f"\nwrote {out}/"


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _train_target(args: argparse.Namespace) -> int:
    from apd.config import unknown_name
    from apd.targets import target_names, train_target_main

    if args.name not in target_names():
        raise ConfigError(f"train-target: {unknown_name('target', args.name, target_names())}")
    return train_target_main(args.name, args.seed, args.force)


def _list(args: argparse.Namespace) -> int:
    from apd.config import experiment_names
    from apd.targets import target_names

    print("experiments:", " ".join(experiment_names()))
    print("targets:    ", " ".join(target_names()))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from apd.sweep.runner import sweep_main

    return sweep_main(args)


def _status(args: argparse.Namespace) -> int:
    from apd.sweep.status import status_main

    return status_main(args)


def _sync(args: argparse.Namespace) -> int:
    from apd.sweep.sync import sync_main

    return sync_main(args)


def _analyze(args: argparse.Namespace) -> int:
    from apd.analysis.report import analyze_main

    return analyze_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="apd", description="Attribution-based Parameter Decomposition sweeps.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("decompose", help="run one decomposition")
    p.add_argument("experiment", help="registered experiment name (see `apd list`) or a config YAML path")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for nested, e.g. target.seed=1); repeatable",
    )
    p.add_argument("--out", help="run folder (default runs/NAME-seedS)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        metavar="STEPS",
        help="steps between checkpoints, a multiple of log_every (default: every log_every)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_decompose)

    p = sub.add_parser("train-target", help="train a registered target model and cache it")
    p.add_argument("name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    p.set_defaults(func=_train_target)

    p = sub.add_parser("list", help="registered experiments and targets")
    p.set_defaults(func=_list)

    p = sub.add_parser("sweep", help="run a sweep YAML through Ray Tune (or inline) under Optuna")
    from apd.sweep.runner import add_sweep_args  # argparse only: Ray loads when a sweep starts

    add_sweep_args(p)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("status", help="progress of a sweep (running elsewhere, or finished) from its folder")
    from apd.sweep.status import add_status_args

    add_status_args(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("sync", help="replay a sweep's results from its folder into MLflow (idempotent)")
    from apd.sweep.sync import add_sync_args

    add_sync_args(p)
    p.set_defaults(func=_sync)

    p = sub.add_parser("analyze", help="report which settings recover the ground truth")
    from apd.analysis.report import add_analyze_args

    add_analyze_args(p)
    p.set_defaults(func=_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ApdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
