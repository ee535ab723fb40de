"""``python -m backend setup-env``: the same setup from a terminal. Stdlib only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .builds import TORCH_CHOICES, TORCH_VERSION
from .errors import SetupCancelled, SetupError
from .plan import make_plan
from .run import Progress, Setup, remove_environment


def add_setup_env_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "setup-env", help="create a Python environment for the backend, with the torch build for this machine",
        description="Create a virtual environment in DIR with this Python, install the torch build that fits this machine "
                    "(CUDA by NVIDIA driver, the default build on Apple Silicon, else CPU) and the backend's requirements, "
                    "then run doctor in it. Running it again resumes or repairs; it needs only the standard library.")
    parser.add_argument("env_dir", type=Path, metavar="DIR", help="the environment's folder (new, or one setup-env made)")
    parser.add_argument("--torch", default="auto", choices=TORCH_CHOICES,
                        help="torch build: auto (default) picks from the NVIDIA driver, Apple Silicon or ROCm; or name one")
    parser.add_argument("--torch-version", default=TORCH_VERSION, metavar="VERSION",
                        help=f"torch release to install (default {TORCH_VERSION}, the one the backend is tested with)")
    parser.add_argument("--index", metavar="URL",
                        help="where torch comes from: a package index URL, or 'default' for pip's configured index "
                             "(default: PyTorch's index for the chosen build)")
    parser.add_argument("--wheels", type=Path, metavar="DIR",
                        help="install offline, only from this folder of wheels (nothing is downloaded)")
    parser.add_argument("--python", metavar="EXE", help="make the environment from this Python (default: the one running this)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (interpreter, index, packages, versions) and stop")
    parser.add_argument("--remove", action="store_true", help="delete the environment DIR (only one setup-env made)")
    return parser


def cmd_setup_env(args: argparse.Namespace) -> int:
    try:
        if args.remove:
            remove_environment(args.env_dir)
            print(f"removed {args.env_dir}", file=sys.stderr)
            return 0
        plan = make_plan(args.env_dir, args.torch, wheels_dir=args.wheels, index=args.index,
                         torch_version=args.torch_version, interpreter=args.python)
        if args.dry_run:
            print("\n".join(plan.describe()))
            return 0
        print(f"setting up {plan.env_dir} (log: {plan.log_path})", file=sys.stderr)
        setup = Setup(plan, on_progress=_print_progress)
        try:
            report = setup.run()
        except KeyboardInterrupt:
            setup.cancel()
            raise SetupCancelled() from None
    except SetupError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    except SetupCancelled:
        print("cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    print("ready:\n  " + "\n  ".join(report.summary()), file=sys.stderr)
    print(f"run the backend with: {report.python} -m backend serve", file=sys.stderr)
    return 0


def _print_progress(progress: Progress) -> None:
    print(f"[{progress.index}/{progress.total}] {progress.fraction:4.0%} {progress.message}", file=sys.stderr, flush=True)
