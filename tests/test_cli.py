import subprocess
import sys

import pytest

from dmnt_lib.__main__ import build_parser, main

SUBCOMMANDS = ["demo", "bench", "data", "deform", "train", "evaluate", "diagnose", "baseline"]


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def test_every_subcommand_is_registered():
    assert set(SUBCOMMANDS) <= _subcommands()


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([cmd, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "dmnt_lib", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in SUBCOMMANDS:
        assert cmd in out


def test_demo_writes_the_uv_fragment_figure(tmp_path):
    import matplotlib.image as mpimg

    assert main(["demo", "--out", str(tmp_path / "fig"), "--cache-dir", str(tmp_path / "cache"), "--only", "uv_fragment"]) == 0
    img = mpimg.imread(tmp_path / "fig" / "uv_fragment.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    # the figure is not blank: several distinct colours
    assert len({tuple(p) for p in img.reshape(-1, img.shape[2])[::97].round(2).tolist()}) > 20


def test_demo_rejects_unknown_stage(tmp_path, capsys):
    from dmnt_lib.demo import run_demo

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path), "--only", "nope"])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown demo stage 'nope'"):
        run_demo(tmp_path, tmp_path, only=["nope"])


def test_demo_stage_list_matches_the_cli():
    from dmnt_lib.__main__ import DEMO_STAGES
    from dmnt_lib.demo import STAGES

    assert DEMO_STAGES == [name for name, _ in STAGES]


def test_bench_subcommand_passes_its_options_through(capsys):
    assert main(["bench", "--sizes", "1x2x8x8x8", "--repeats", "1", "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [r for r in (line.split() for line in out.splitlines()) if len(r) > 3 and r[1] == "cpu"]
    assert {r[0] for r in rows} >= {"reference", "torch", "grid_sample"}
    assert all(r[2] == "1x2x8x8x8" for r in rows)  # the --sizes option reached the benchmark
