"""Command line: ``python -m dmnt_lib {demo,data,deform,train,evaluate,diagnose,baseline,figures,reproduce,bench} ...`` (each has ``--help``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# Kept in sync with demo.STAGES by tests/test_cli.py (importing demo here would load torch for --help).
DEMO_STAGES = ["uv_fragment", "transform", "data", "deformation", "training"]

# Subcommands that live in their own modules: each has add_parser(subparsers) and run(args).
_SUBCOMMAND_MODULES = ["dmnt_lib.data.cli", "dmnt_lib.deform.cli", "dmnt_lib.model.cli", "dmnt_lib.evaluate",
                       "dmnt_lib.inference.diagnose", "dmnt_lib.baseline.cli", "dmnt_lib.figures.cli", "dmnt_lib.reproduce.cli"]


def _default_cache() -> Path:
    return Path(os.environ.get("DMNT_CACHE_DIR", Path.home() / ".cache" / "dmnt_lib"))


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, args.cache_dir, quick=args.quick, only=args.only)
    return 0




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dmnt_lib", description="DMNT reproduction: demos, data, fitting, benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="regenerate every figure into figures/", description="Regenerate the project's figures (uv fragment, transform, dataset, deformation) into --out.")
    demo.add_argument("--out", type=Path, default=Path("figures"), help="figure folder (default: figures)")
    demo.add_argument("--cache-dir", type=Path, default=_default_cache(), help="where generated data is cached (default: $DMNT_CACHE_DIR or ~/.cache/dmnt_lib)")
    demo.add_argument("--quick", action="store_true", default=os.environ.get("DMNT_QUICK") == "1", help="smaller, faster versions (default from DMNT_QUICK=1)")
    demo.add_argument("--only", nargs="+", metavar="STAGE", choices=DEMO_STAGES, help=f"run only these stages ({', '.join(DEMO_STAGES)})")
    demo.set_defaults(func=_run_demo)

    # Listed here for the overview; main() hands everything after "bench" to dmnt_lib.bench.main.
    sub.add_parser("bench", help="benchmark the image->UV transform backends (see: bench --help; training: bench train --help; inference: bench infer --help)", add_help=False)

    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a subcommand still being written; tests check all exist
            if e.name and name.startswith(e.name):
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "train"]:  # training throughput (dmnt_lib.model.bench)
        from .model.bench import main as bench_train_main

        return int(bench_train_main(argv[2:]) or 0)
    if argv[:2] == ["bench", "infer"]:  # render-and-compare seconds per image (dmnt_lib.inference.bench)
        from .inference.bench import main as bench_infer_main

        return int(bench_infer_main(argv[2:]) or 0)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
