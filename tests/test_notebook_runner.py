"""The notebook runner behind ``make notebooks``: seeded, outputs embedded, written back
atomically only when asked, nothing written when a cell fails."""

import nbformat
import pytest

from dmnt_lib.notebooks import execute_notebook


def _write(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t")] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path.read_bytes()


CELLS = [
    "import os, numpy as np, torch\nprint(os.environ['DMNT_QUICK'], np.random.rand(), float(torch.rand(1)))",
    "import matplotlib.pyplot as plt\nplt.plot(np.random.rand(5)); plt.show()",
]


@pytest.mark.notebook
@pytest.mark.slow
def test_execute_writes_back_seeded_outputs(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    path = tmp_path / "t.ipynb"
    _write(path, CELLS)
    execute_notebook(path, quick=False, write=True)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in code] == CELLS  # the seed cell is not kept
    assert [c.execution_count for c in code] == [1, 2]
    text = code[0].outputs[0]["text"]
    assert text.startswith("0 ")  # the full (non-quick) configuration
    assert any("image/jpeg" in o.get("data", {}) for o in code[1].outputs)  # the figure is embedded (JPEG)
    first = path.read_text()
    execute_notebook(path, quick=False, write=True)
    assert nbformat.read(path, as_version=4).cells[1].outputs[0]["text"] == text  # same seed, same numbers
    assert path.read_text() == first


@pytest.mark.notebook
@pytest.mark.slow
def test_failing_cell_writes_nothing(tmp_path):
    from nbclient.exceptions import CellExecutionError

    path = tmp_path / "bad.ipynb"
    original = _write(path, ["x = 1", "raise RuntimeError('cell fails')"])
    with pytest.raises(CellExecutionError, match="cell fails"):
        execute_notebook(path, write=True)
    assert path.read_bytes() == original
    with pytest.raises(FileNotFoundError):
        execute_notebook(tmp_path / "none.ipynb")
    with pytest.raises(ValueError, match="seed"):
        execute_notebook(path, seed=-1)


def test_runs_env_points_the_notebooks_at_a_finished_reproduce_folder(tmp_path):
    from dmnt_lib.notebooks import main, runs_env

    files = ["dmnt/model.pt", "data/train/meta.json", "data/test/meta.json", "baseline/run.json"]
    files += [f"manifest/{s}.json" for s in ("data-train", "data-test", "train", "baseline")]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    env = runs_env(tmp_path)
    assert env["DMNT_RUN"] == str((tmp_path / "dmnt").resolve())
    assert env["DMNT_TRAIN_DATA"] == str((tmp_path / "data/train").resolve())
    assert env["DMNT_DATA"] == env["DMNT_TEST_DATA"] == str((tmp_path / "data/test").resolve())
    assert env["DMNT_BASELINE_RUN"] == str((tmp_path / "baseline").resolve()) and env["DMNT_RUNS"] == str(tmp_path.resolve())
    assert "DMNT_VAL_DATA" not in env  # a run without a validation set of its own
    (tmp_path / "data/val").mkdir()
    assert runs_env(tmp_path)["DMNT_VAL_DATA"] == str((tmp_path / "data/val").resolve())
    (tmp_path / "manifest/baseline.json").unlink()  # an unfinished baseline (run.json is written first): refused
    with pytest.raises(FileNotFoundError, match="manifest/baseline.json"):
        runs_env(tmp_path)
    assert main(["--runs", str(tmp_path), str(tmp_path / "none.ipynb")]) == 2
