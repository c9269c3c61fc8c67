"""Benchmark the rasterization backends only (PyTorch3D vs Embree); see ``dmnt_lib.bench_raster``.

Usage: ``python benchmarks/bench_raster.py [--quick] [--raster-sizes S ...] [--raster-poses B ...] [--repeats N]``
(``make bench`` prints this table after the transform table).
"""
import sys

from dmnt_lib.bench import main

if __name__ == "__main__":
    sys.exit(main(["--only", "raster", *sys.argv[1:]]))
