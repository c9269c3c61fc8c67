"""Training throughput with the time split per phase; see ``dmnt_lib.model.bench``.

Usage: ``python benchmarks/bench_train.py [--data DIR --deform DIR] [--batch-size B] [--steps N] [--threads T]``
(the same as ``python -m dmnt_lib bench train ...``).
"""
import sys

from dmnt_lib.model.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
