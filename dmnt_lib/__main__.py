"""Command line: ``python -m dmnt_lib {demo,data,deform,bench} ...`` (each has ``--help``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# Subcommands that live in their own modules: each has add_parser(subparsers) and run(args).
_SUBCOMMAND_MODULES = ["dmnt_lib.data.cli", "dmnt_lib.deform_cli"]


def _default_cache() -> Path:
    return Path(os.environ.get("DMNT_CACHE_DIR", Path.home() / ".cache" / "dmnt_lib"))


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, args.cache_dir, quick=args.quick, only=args.only)
    return 0


def _run_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args.bench_args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dmnt_lib", description="DMNT reproduction: demos, data, fitting, benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="regenerate every figure into figures/", description="Regenerate the project's figures (uv fragment, transform, dataset, deformation) into --out.")
    demo.add_argument("--out", type=Path, default=Path("figures"), help="figure folder (default: figures)")
    demo.add_argument("--cache-dir", type=Path, default=_default_cache(), help="where generated data is cached (default: $DMNT_CACHE_DIR or ~/.cache/dmnt_lib)")
    demo.add_argument("--quick", action="store_true", default=os.environ.get("DMNT_QUICK") == "1", help="smaller, faster versions (default from DMNT_QUICK=1)")
    demo.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages")
    demo.set_defaults(func=_run_demo)

    bench = sub.add_parser("bench", help="benchmark the image->UV transform backends", description="Benchmark the image->UV transform; arguments after 'bench' go to the benchmark (try: bench -- --help).", add_help=True)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark (see: python -m dmnt_lib bench -- --help)")
    bench.set_defaults(func=_run_bench)

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
    args = build_parser().parse_args(argv)
    if getattr(args, "bench_args", None) and args.bench_args[:1] == ["--"]:
        args.bench_args = args.bench_args[1:]
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
