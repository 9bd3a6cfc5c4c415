"""The Colab notebooks in experiments/ run end to end in SMOKE mode on CPU (nbclient + ipykernel).

Each notebook runs in a fresh kernel with ``MFM_JAX_SMOKE=1`` and ``MFM_JAX_NOTEBOOK_OUT`` set to
a temp dir, the repository root as working directory; a cell that raises fails the test
(``CellExecutionError`` names the cell). The outputs each notebook is there to show are checked.
"""
import base64
import glob
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses compile without LLVM optimisation (as tests/models/test_dit.py's FAST options):
# a third less CPU per smoke run; every number compared here comes from runs with the same flags.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
NOTEBOOKS = ("quickstart", "encoder_kadaptation", "benchmarks", "world4d_edit")


def _run(name, out, monkeypatch):
  monkeypatch.setenv("MFM_JAX_SMOKE", "1")
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_XLA}")
  monkeypatch.setenv("MFM_JAX_NOTEBOOK_OUT", str(out))
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(os.path.join(ROOT, "experiments", f"{name}.ipynb"), as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  return nb


def _outputs(nb, kind):
  """All outputs of the code cells: ``kind`` "text" (stream + text/plain) or a mime type."""
  found = []
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      if kind == "text":
        found.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
      elif kind in o.get("data", {}):
        found.append(o["data"][kind])
  return found


def test_committed_notebooks_are_clean_and_smoke_switchable():
  for name in NOTEBOOKS:
    nb = nbformat.read(os.path.join(ROOT, "experiments", f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: outputs"
    assert "pip" in code[0].source and "find_spec(\"mfm_jax\")" in code[0].source, name
    assert "jax[tpu]" in code[0].source, name
    assert "SMOKE = False" in code[1].source and "MFM_JAX_SMOKE" in code[1].source, name
    src = "\n".join(c.source for c in code)
    assert "mfm_jax._" not in src and "from mfm_jax._" not in src, f"{name}: private API"


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
  nb = _run("quickstart", tmp_path, monkeypatch)
  gifs = _outputs(nb, "image/gif")
  assert len(gifs) == 1 and base64.b64decode(gifs[0])[:6] in (b"GIF87a", b"GIF89a")
  assert _outputs(nb, "image/png"), "no loss plot"
  with open(tmp_path / "video_gen" / "metrics.jsonl") as f:
    steps = [json.loads(l)["step"] for l in f]
  assert max(steps) == 6


@pytest.mark.slow
def test_encoder_kadaptation(tmp_path, monkeypatch):
  nb = _run("encoder_kadaptation", tmp_path, monkeypatch)
  text = "\n".join(_outputs(nb, "text"))
  assert "trainable params:" in text and "accuracy:" in text
  evals = sorted(glob.glob(str(tmp_path / "kadaptation" / "eval" / "classify_*.json")))
  with open(evals[-1]) as f:
    res = json.load(f)
  assert 0 < res["eval/trainable_params"] < res["eval/total_params"]
  assert f"{res['eval/trainable_params']:,} of {res['eval/total_params']:,}" in text
  assert 0.0 <= res["eval/accuracy"] <= 1.0


@pytest.mark.slow
def test_benchmarks(tmp_path, monkeypatch):
  nb = _run("benchmarks", tmp_path, monkeypatch)
  table = "\n".join(_outputs(nb, "text/markdown"))
  for bench in ("mmworld", "vlm4d"):
    for model in ("random", "constant_A"):
      with open(tmp_path / f"{bench}_{model}" / "results.json") as f:
        s = json.load(f)["summary"]
      assert s["n"] > 0
      assert f"| {bench} | {model.replace('_', ':')} | {s['n']} | {s['accuracy']:.1f}" in table
  with open(tmp_path / "mmworld_constant_A" / "results.json") as f:
    assert json.load(f)["summary"]["accuracy_std"] == 0.0   # same answers every run


@pytest.mark.slow
def test_world4d_edit(tmp_path, monkeypatch):
  nb = _run("world4d_edit", tmp_path, monkeypatch)
  assert _outputs(nb, "image/gif"), "no turntable"
  assert _outputs(nb, "image/png"), "no before/after figure"
  text = "\n".join(_outputs(nb, "text"))
  assert "Command(" in text and "recolour" in text and "selected " in text
