"""Compile a config's train step for a target topology without the hardware, and report memory.

An out-of-memory or sharding error shows here, on a laptop, before a pod is booked. The step is the
one ``python -m mfm_jax.train`` runs (``engine.trainer.build_train_step``: same optimizer, state
shardings, donated state, batch sharding), lowered with abstract arguments and compiled with JAX
AOT (``jax.jit(step).lower(abstract state, abstract batch).compile()``)::

  python tools/aot_compile.py --config configs/video_gen.py:b --topology v5e-256
  python tools/aot_compile.py --config configs/video_gen.py:smoke --mesh data=1,fsdp=8
  python tools/aot_compile.py --config configs/toy.py --mesh fsdp=8 --config.model.out=8 \\
      --json /tmp/aot.json
  python tools/aot_compile.py --config configs/video_gen.py:xl --devices 64 --hbm_gib 80  # GPUs

Targets. ``--topology`` takes a Cloud TPU accelerator type (``v4-32``, ``v5p-128``, ``v5e-256`` =
``v5litepod-256``, ``v6e-64``) or a JAX topology name (``v5e:16x16``, ``v4:2x2x4``). With the TPU
plugin installed (``pip install jax[tpu]``: libtpu), the step is compiled by the TPU compiler for
compile-only devices of that topology (``jax.experimental.topologies.get_topology_desc``), and an
HBM overflow fails the compilation. Without it (``--backend fake``, what ``auto`` falls back to),
the step is compiled for a fake CPU mesh with the same number of devices
(``--xla_force_host_platform_device_count`` set before JAX is imported): the shardings, the
collectives and the per-device shapes are the target's, the memory figures are the CPU compiler's
(fusion and layout differ from the TPU's, so treat them as an estimate), and the total is checked
against the target's HBM per chip (``--hbm_gib`` for GPUs or to override). The output says which.
JAX 0.10.2 has no compile-only GPU topology without the CUDA plugin and a target config, so GPU
targets use the fake mesh: ``--devices N --hbm_gib 80``.

The mesh is ``config.mesh.axes`` (``-1`` = the devices left) unless ``--mesh data=1,fsdp=8``
replaces it (unnamed axes are 1). The batch's shapes come from ``task.batch_spec(global_batch)``
when a task defines it, otherwise from one example of the task's train iterator (for the world
video configs that builds the world's TFDS split once; ``--config.data.builder_config=small``
picks a smaller one with the same clip shape).

Prints a table: per-device state bytes from the shardings (params, optimizer state, EMA), the
compiled executable's memory analysis (arguments, outputs, aliased by donation, temporaries,
generated code, total), HBM headroom, FLOPs from its cost analysis (per device and in all) next to
the analytic count. Exit status: 0 fits, 1 the compilation failed (the error is printed), 2 it
compiled but does not fit the target's HBM.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# generation -> (JAX topology prefix, accelerator-type count per chip, topology dims, HBM GiB/chip)
TPU_KINDS = {"v4": ("v4", 2, 3, 32), "v5p": ("v5p", 2, 3, 95), "v5e": ("v5e", 1, 2, 16),
             "v5litepod": ("v5e", 1, 2, 16), "v6e": ("v6e", 1, 2, 32)}
GIB = 1024 ** 3


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
  """The usual slice shape of ``chips`` chips: 2-D ``a x b`` (v5e/v6e), 3-D ``x y z`` (v4/v5p)."""
  if dims == 2:
    a = 2 ** int(math.log2(chips) // 2)
    return (a, chips // a)
  grid = [2, 2, 1] if chips >= 4 else [1, 1, chips]
  while math.prod(grid) < chips:
    m = min(grid)
    grid[max(i for i, g in enumerate(grid) if g == m)] *= 2
  return tuple(grid)


def parse_topology(name: str) -> dict[str, Any]:
  """``v5e-256`` / ``v5litepod-16`` / ``v4-32`` / ``v5e:16x16`` -> kind, JAX name, chips, HBM."""
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)(?:-(\d+)|:(\d+(?:x\d+)+))", name.strip().lower())
  if not m:
    raise ValueError(f"--topology {name!r}: use e.g. v5e-256, v4-32, v5p-128, v6e-64 or v5e:16x16 "
                     f"(known generations: {sorted(TPU_KINDS)})")
  prefix, per_chip, dims, hbm = TPU_KINDS[m.group(1)]
  if m.group(3):
    grid = tuple(int(g) for g in m.group(3).split("x"))
  else:
    count = int(m.group(2))
    if count % per_chip:
      raise ValueError(f"--topology {name}: {m.group(1)} counts {per_chip} cores per chip")
    grid = chip_grid(count // per_chip, dims)
  return dict(kind=prefix, name=f"{prefix}:{'x'.join(map(str, grid))}", chips=math.prod(grid),
              hbm_bytes=hbm * GIB, label=name)


def parse_mesh(text: str) -> dict[str, int]:
  """``"data=1,fsdp=8"`` -> all four mesh axes (unnamed ones are 1)."""
  axes = dict(data=1, fsdp=1, context=1, tensor=1)
  for item in filter(None, (s.strip() for s in text.split(","))):
    key, _, value = item.partition("=")
    if key not in axes or not value:
      raise ValueError(f"--mesh {text!r}: use axis=size for axes {sorted(axes)}")
    axes[key] = int(value)
  return axes


def _tpu_plugin_installed() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  for module in ("libtpu", "jax_plugins.xla_tpu"):
    try:
      if importlib.util.find_spec(module) is not None:
        return True
    except ModuleNotFoundError:
      pass
  return False


def setup_backend(args: argparse.Namespace) -> dict[str, Any]:
  """Decides topology vs fake mesh and, for the latter, sets the XLA flag before JAX loads."""
  topo = parse_topology(args.topology) if args.topology else None
  mode = args.backend
  if mode == "auto":
    mode = "tpu" if topo and _tpu_plugin_installed() else "fake"
  if mode == "tpu" and not topo:
    raise ValueError("--backend tpu needs --topology")
  target = dict(mode=mode, topology=topo, hbm_bytes=(args.hbm_gib * GIB if args.hbm_gib else
                                                     (topo or {}).get("hbm_bytes")))
  if mode == "fake":
    if topo:
      n = topo["chips"]
    elif args.devices:
      n = args.devices
    elif args.mesh and all(v > 0 for v in parse_mesh(args.mesh).values()):
      n = math.prod(parse_mesh(args.mesh).values())
    else:
      n = 8
    if "jax" in sys.modules:
      raise RuntimeError("aot_compile: JAX was imported before the fake device count was set")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    target["num_devices"] = n
    why = ("the TPU plugin (libtpu) is not installed, so no compile-only topology"
           if topo and args.backend == "auto" else "--backend fake")
    target["description"] = (f"fake CPU mesh of {n} devices standing in for {topo['label']} "
                             f"({topo['name']}; {why})" if topo else
                             f"fake CPU mesh of {n} devices")
  else:
    target["num_devices"] = topo["chips"]
    target["description"] = (f"TPU {topo['name']} ({topo['chips']} chips), compile-only devices "
                             "from jax.experimental.topologies")
  return target


def target_devices(target: dict[str, Any]) -> list[Any]:
  import jax  # pylint: disable=g-import-not-at-top
  if target["mode"] == "tpu":
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    return list(topologies.get_topology_desc(target["topology"]["name"], platform="tpu").devices)
  return list(jax.devices())


def make_target_mesh(axes, devices):
  """The train CLI's mesh on the given devices (physical order for topology devices)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import AxisType, Mesh  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  if list(devices) == list(jax.devices()):
    return mesh_lib.make_mesh(axes)
  shape = mesh_lib.mesh_shape(axes, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except Exception:  # pylint: disable=broad-except
    import numpy as np  # pylint: disable=g-import-not-at-top
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, mesh_lib.MESH_AXES, axis_types=(AxisType.Auto,) * len(mesh_lib.MESH_AXES))


def batch_spec(task, config, mesh, rules) -> dict[str, Any]:
  """Abstract global batch (``ShapeDtypeStruct`` with the train loop's batch sharding)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  b = int(config.batch_size)
  if callable(getattr(task, "batch_spec", None)):
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in task.batch_spec(b).items()}
  else:
    local = next(iter(task.make_iterator("train", 1, int(config.seed), 0, 1)))
    shapes = {k: ((b,) + np.shape(v)[1:], np.asarray(v).dtype) for k, v in local.items()}
  return {k: jax.ShapeDtypeStruct(s, d, sharding=mesh_lib.batch_sharding(mesh, rules, len(s)))
          for k, (s, d) in shapes.items()}


def sharded_bytes(tree) -> tuple[int, int]:
  """``(bytes per device, global bytes)`` of a tree of ShapeDtypeStructs carrying shardings."""
  import jax  # pylint: disable=g-import-not-at-top
  per, total = 0, 0
  for x in jax.tree.leaves(tree):
    size = x.dtype.itemsize
    total += math.prod(x.shape) * size
    per += math.prod(x.sharding.shard_shape(x.shape)) * size
  return per, total


def compile_train_step(config, devices=None, task=None, compile_step: bool = True
                       ) -> dict[str, Any]:
  """Lowers and compiles the train step of ``config`` on ``devices``; returns the report dict.

  Raises what lowering or compilation raises (sharding errors, out of memory on a real target).
  ``compile_step=False`` stops after lowering: the bytes from the shardings, no memory analysis.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mfm_jax import tasks  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import optim  # pylint: disable=g-import-not-at-top
  from mfm_jax.engine import trainer  # pylint: disable=g-import-not-at-top
  devices = list(jax.devices() if devices is None else devices)
  task = task or tasks.get(config.task)(config)
  mesh = make_target_mesh(config.mesh.axes, devices)
  rules = mesh_lib.rules_from_config(config.mesh.get("rules"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = batch_spec(task, config, mesh, rules)
    step, abstract, _ = trainer.build_train_step(
        config, task, mesh, rules, {k: v.sharding for k, v in batch.items()})
    t0 = time.perf_counter()
    lowered = step.lower(abstract, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile() if compile_step else None
    t2 = time.perf_counter()
  rep = dict(mesh={k: int(v) for k, v in mesh.shape.items()}, num_devices=len(devices),
             device_kind=devices[0].device_kind, global_batch=int(config.batch_size),
             params=optim.count_params(abstract.params), lower_sec=t1 - t0, compile_sec=t2 - t1)
  for name, tree in (("params", abstract.params), ("opt_state", abstract.opt_state),
                     ("ema_params", abstract.ema_params), ("state", abstract), ("batch", batch)):
    rep[f"{name}_bytes_per_device"], rep[f"{name}_bytes_global"] = sharded_bytes(tree)
  if compiled is None:
    return rep
  mem = compiled.memory_analysis()
  if mem is not None:
    for key in ("argument", "output", "alias", "temp", "generated_code"):
      rep[f"{key}_bytes"] = int(getattr(mem, f"{key}_size_in_bytes"))
    rep["total_bytes"] = (rep["argument_bytes"] + rep["output_bytes"] - rep["alias_bytes"]
                          + rep["temp_bytes"] + rep["generated_code_bytes"])
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and "flops" in cost:
    rep["flops_per_device"] = float(cost["flops"])
    rep["flops_total"] = float(cost["flops"]) * len(devices)
  fpe = task.flops_per_example()
  if fpe:
    rep["flops_analytic"] = 3.0 * fpe * int(config.batch_size)
  return rep


def _fmt_bytes(n: float | None) -> str:
  if n is None:
    return "n/a"
  for unit, div in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
    if abs(n) >= div:
      return f"{n / div:,.2f} {unit}"
  return f"{int(n)} B"


def format_report(rep: dict[str, Any], target: dict[str, Any] | None = None) -> str:
  """A readable Markdown table of :func:`compile_train_step`'s report."""
  target = target or {}
  lines = [f"target: {target.get('description', rep['device_kind'])}",
           "mesh: " + ", ".join(f"{k}={v}" for k, v in rep["mesh"].items())
           + f" ({rep['num_devices']} devices); global batch {rep['global_batch']}; "
           f"{rep['params']:,} params; lower {rep['lower_sec']:.1f} s, "
           f"compile {rep['compile_sec']:.1f} s", "",
           "| per device | bytes | |", "|---|---:|---|"]
  rows = [("params (from shardings)", "params_bytes_per_device", "params_bytes_global"),
          ("optimizer state", "opt_state_bytes_per_device", "opt_state_bytes_global"),
          ("EMA params", "ema_params_bytes_per_device", "ema_params_bytes_global"),
          ("train state", "state_bytes_per_device", "state_bytes_global"),
          ("batch", "batch_bytes_per_device", "batch_bytes_global")]
  for label, key, glob in rows:
    lines.append(f"| {label} | {_fmt_bytes(rep[key])} | of {_fmt_bytes(rep[glob])} in all |")
  for label, key in (("arguments", "argument_bytes"), ("outputs", "output_bytes"),
                     ("aliased (donated)", "alias_bytes"), ("temporaries", "temp_bytes"),
                     ("generated code", "generated_code_bytes")):
    lines.append(f"| {label} | {_fmt_bytes(rep.get(key))} | memory analysis |")
  hbm = target.get("hbm_bytes")
  note = (f"{100 * rep['total_bytes'] / hbm:.1f}% of {_fmt_bytes(hbm)} HBM"
          if hbm and "total_bytes" in rep else "args + out - alias + temp + code")
  lines.append(f"| **total** | **{_fmt_bytes(rep.get('total_bytes'))}** | {note} |")
  if "flops_per_device" in rep:
    lines.append(f"| FLOPs per step | {rep['flops_per_device']:.4g} | cost analysis; "
                 f"{rep['flops_total']:.4g} on all devices |")
  if "flops_analytic" in rep:
    lines.append(f"| FLOPs per step (analytic) | {rep['flops_analytic'] / rep['num_devices']:.4g}"
                 f" | 3 x forward x batch / devices; {rep['flops_analytic']:.4g} in all |")
  return "\n".join(lines)


def _arg_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
  p.add_argument("--topology", default="")
  p.add_argument("--mesh", default="")
  p.add_argument("--devices", type=int, default=0)
  p.add_argument("--backend", default="auto", choices=("auto", "tpu", "fake"))
  p.add_argument("--hbm_gib", type=float, default=0.0)
  p.add_argument("--json", default="")
  return p


def main(argv: list[str]) -> int:
  if {"-h", "--help"} & set(argv[1:]):
    print(__doc__)
    return 0
  args, rest = _arg_parser().parse_known_args(argv[1:])
  target = setup_backend(args)            # before anything imports JAX
  import json  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flag = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).")
  try:
    flags.FLAGS([argv[0]] + rest)
  except flags.Error as e:
    print(f"aot_compile: {e}", file=sys.stderr)
    return 1
  config = config_flag.value
  if config is None:
    print("aot_compile: --config is required", file=sys.stderr)
    return 1
  if args.mesh:
    config.mesh.axes = parse_mesh(args.mesh)
  try:
    devices = target_devices(target)
  except Exception as e:  # pylint: disable=broad-except
    print(f"aot_compile: no {target['topology']['name']} topology ({e}); rerun with --backend fake",
          file=sys.stderr)
    return 1
  print(f"aot_compile: compiling the train step of {config.task} ({len(devices)} devices) ...",
        flush=True)
  try:
    rep = compile_train_step(config, devices)
  except Exception as e:  # pylint: disable=broad-except
    print(f"aot_compile: compilation FAILED on {target['description']}, mesh "
          f"{dict(config.mesh.axes)}:\n{type(e).__name__}: {e}", file=sys.stderr)
    return 1
  rep["target"] = {k: v for k, v in target.items() if k != "topology"}
  print(format_report(rep, target))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rep, f, indent=2)
  hbm = target.get("hbm_bytes")
  if hbm and rep.get("total_bytes", 0) > hbm:
    print(f"aot_compile: does NOT fit: {_fmt_bytes(rep['total_bytes'])} per device > "
          f"{_fmt_bytes(hbm)} HBM", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
