"""Benchmark render-and-compare inference (default schedule vs a NeMo-style slow one); see ``dmnt_lib.inference.bench``.

Usage: ``python benchmarks/bench_infer.py [--run RUN --data DIR] [--images N] [--slow-images M] [--threads 2] [--quick]``
"""
import sys

from dmnt_lib.inference.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
