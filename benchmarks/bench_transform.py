"""Benchmark the image->UV transform backends (``make bench``); see ``dmnt_lib.bench``.

Usage: ``python benchmarks/bench_transform.py [--quick] [--sizes BxCxHxWxS ...] [--repeats N] [--device cpu|cuda|all]``
"""
import sys

from dmnt_lib.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
