"""The planner against what a compiled train step really holds (tiny AST on the 8 test devices)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import transformers

from jaxspeech import cli, sharding
from jaxspeech.train import registry
from jaxspeech.ast import convert, family as ast_family
from jaxspeech.data import pipeline
from jaxspeech.train import plan as plan_lib, state as state_lib, trainer
from tests.helpers import OVERRIDES, ROOT, load_config, tiny_ast
from tests.helpers.llasa import tiny_config as tiny_llasa

STEP_AND_RNG = 4 + 8  # int32 step and a uint32[2] key, replicated


def _compiled_step(cfg):
  """The trainer's train step compiled for a real state and a real batch, as `jaxspeech train` runs it."""
  run = trainer.Trainer(cfg, workdir="")
  iterator = pipeline.make_iterator(run.family.make_data(cfg, "train", train=True, shard_index=0, shard_count=1))
  with sharding.use_rules(run.mesh, run.rules):
    state, _ = state_lib.create(run.family, cfg, run.tx, run.mesh)
    compiled = run.train_step.lower(state, run._global(next(iterator))).compile()  # pylint: disable=protected-access
  iterator.close()
  return state, compiled.memory_analysis()


@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=8, tensor=1, sequence=1),
                                  dict(data=2, fsdp=2, tensor=2, sequence=1)])
def test_plan_matches_the_compiled_step(corpus_path, mesh):
  cfg = tiny_ast(corpus_path)
  plan = plan_lib.measure(cfg, mesh)
  cfg.mesh.update(mesh)
  state, stats = _compiled_step(cfg)
  # The same program: XLA's figures agree to the byte.
  assert plan.xla == dict(argument=stats.argument_size_in_bytes, output=stats.output_size_in_bytes,
                          alias=stats.alias_size_in_bytes, temp=stats.temp_size_in_bytes)
  assert plan.per_device["total"] == (stats.argument_size_in_bytes + stats.output_size_in_bytes
                                      - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
  # The breakdown is what one device of the real state holds, and all of the donated state.
  shard_bytes = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
  assert plan.per_device["params"] == shard_bytes(state.params)
  assert plan.per_device["optimizer"] == shard_bytes(state.opt_state)
  assert plan.per_device["params"] + plan.per_device["optimizer"] + STEP_AND_RNG == stats.alias_size_in_bytes
  # Biases and norms stay whole, so the real state is never below the estimate that splits every param.
  assert plan.analytic["state"] <= stats.alias_size_in_bytes - STEP_AND_RNG


def test_param_count_matches_the_model_and_transformers():
  cfg = load_config("ast", "base")
  _, abstract_params, _ = state_lib.abstract_model(ast_family.FAMILY, cfg)
  hf = transformers.ASTForAudioClassification(convert.ast_to_hf_config(ast_family.model_config(cfg)))
  assert state_lib.param_count(abstract_params) == hf.num_parameters() == 86_201_104


def test_mesh_argument_folds_slices_into_their_axis():
  assert plan_lib.parse_mesh("data=8,dcn_data=2,tensor=2") == dict(data=16, fsdp=1, tensor=2, sequence=1)
  assert plan_lib.parse_mesh("fsdp=4,sequence=2") == dict(data=1, fsdp=4, tensor=1, sequence=2)


def test_state_estimate_splits_over_fsdp_and_tensor():
  one = plan_lib.analytic(1000, dict(data=8, fsdp=1, tensor=1, sequence=1), ema=False)
  split = plan_lib.analytic(1000, dict(data=1, fsdp=4, tensor=2, sequence=1), ema=True)
  assert one == dict(params=4000, optimizer=8000, ema=0, gradients=4000, state=12000)
  assert split == dict(params=500, optimizer=1000, ema=500, gradients=500, state=2000)


def _plan(**per_device):
  base = dict(params=2**30, optimizer=2**31, ema=0, batch=2**20, gradients=2**30, activations=2**32)
  per_device = {**base, **per_device}
  state = per_device["params"] + per_device["optimizer"]
  per_device["total"] = sum(v for k, v in per_device.items() if k != "batch") + per_device["batch"]
  return plan_lib.Plan(family="ast", platform="cpu", mesh=dict(data=1, fsdp=8, tensor=1, sequence=1), params=2**28,
                       per_device=per_device, xla=dict(argument=0, output=0, alias=state, temp=0),
                       analytic=plan_lib.analytic(2**28 * 8, dict(data=1, fsdp=8, tensor=1, sequence=1), False),
                       flops_per_step=8 * 989e12)


def test_report_projects_step_time_fits_and_flags_a_gap():
  text = plan_lib.report(_plan(), "h100", None, mfu=0.5, step_time=2.0)
  assert "step time on 8 × h100: 1e+03 ms at 100% MFU (989 TFLOP/s bf16 peak each), 2e+03 ms at 50% MFU" in text
  assert "MFU at a measured 2e+03 ms per step: 50.0%" in text
  assert "fits in 79.6 GiB HBM? yes" in text and "note:" not in text
  assert "fits in 8 GiB HBM? NO" in plan_lib.report(_plan(), "h100", 8.0, mfu=0.5, step_time=None)
  # 5 GiB of state where the estimate says 3 GiB.
  assert "(67% apart)" in plan_lib.report(_plan(optimizer=2**32), None, None, mfu=0.5, step_time=None)


@pytest.mark.parametrize("argv, message", [
    (["--config=configs/ast.py:tiny", "--mesh", "data=2,fsdp=x"], "--mesh takes axis=size pairs"),
    (["--config=configs/ast.py:tiny", "--mesh", "pipeline=2"], "--mesh takes axis=size pairs"),
    (["--config=configs/ast.py:tiny", "--mesh", "fsdp=8", "--device", "h900"], "invalid choice: 'h900'"),
    (["--config=configs/ast.py:nope", "--mesh", "fsdp=8"], "unknown variant 'nope'"),
    (["--config=configs/ast.py:tiny"], "give --mesh axis=size,... (or --topology for a TPU pod)"),
    (["--config=configs/ast.py:tiny", "--mesh", "data=2,fsdp=32"], "train.batch_size=32 does not split over"),
    (["--config=configs/ast.py:tiny", "--mesh", "tensor=100000"], "the CPU planner simulates at most 1,024"),
])
def test_bad_input_is_one_line(capfd, argv, message):
  assert cli.main(["plan", *argv]) == 2
  err = capfd.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1, err


def test_native_compiles_for_this_hosts_devices(corpus_path, capfd):
  argv = ["--config=configs/ast.py:tiny", f"--config.data.path={corpus_path}", *OVERRIDES, "--native"]
  assert cli.main(["plan", *argv, "--mesh", "data=2,tensor=8"]) == 2
  assert "--native: the mesh needs 16 devices, this host has 8" in capfd.readouterr().err
  assert cli.main(["plan", *argv, "--mesh", "tensor=3"]) == 2
  err = capfd.readouterr().err
  assert "param blocks/0/attn/key/bias (4, 8) over tensor=3, which does not divide it" in err, err
  assert len(err.strip().splitlines()) == 1
  assert cli.main(["plan", *argv, "--mesh", "fsdp=2", "--hbm-gib", "1"]) == 0
  lines = capfd.readouterr().out.splitlines()
  assert lines[0] == "ast on mesh data=1 fsdp=2 tensor=1 sequence=1 (2 devices)"
  assert lines[2].endswith("(XLA memory_analysis of the compiled train step, cpu compiler)")
  assert lines[-1].startswith("fits in 1 GiB HBM? yes")


def test_cli_plans_a_mesh_larger_than_this_process(corpus_path):
  """16 devices from an 8-device environment: the plan runs where JAX gets as many fake devices as the mesh."""
  result = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "plan", "--config=configs/ast.py:tiny",
       f"--config.data.path={corpus_path}", *OVERRIDES, "--config.train.batch_size=16", "--mesh", "data=2,fsdp=8",
       "--device", "v5p", "--hbm-gib", "0.001"],
      cwd=ROOT, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0] == "ast on mesh data=2 fsdp=8 tensor=1 sequence=1 (16 devices)"
  assert any(line.startswith("step time on 16 × v5p:") for line in lines)
  assert lines[-1].startswith("fits in 0.001 GiB HBM? NO")


def tiny_dit(corpus_path):
  """configs/dit.py:tiny with one bucket every corpus clip fits, so every batch has batch_shapes' shape."""
  cfg = load_config("dit", "tiny")
  cfg.data.update(path=corpus_path, bucket_seconds=(12.0,), frame_budget=9000)  # 8 rows: one per test device
  return cfg


@pytest.mark.parametrize("name", ["ast", "llasa", "dit"])
def test_batch_shapes_are_a_real_batch(corpus_path, code_data, name):
  """The planner's data-free shapes (`Family.batch_shapes`) are those of a batch the pipeline really makes."""
  cfg = {"ast": tiny_ast, "llasa": lambda _: tiny_llasa(code_data), "dit": tiny_dit}[name](corpus_path)
  fam = registry.get(name)
  iterator = pipeline.make_iterator(fam.make_data(cfg, "train", train=True, shard_index=0, shard_count=1))
  batch = next(iterator)
  iterator.close()
  shapes = fam.batch_shapes(cfg)
  assert set(shapes) == set(fam.batch_axes(cfg))
  real = {k: (np.shape(batch[k]), jax.dtypes.canonicalize_dtype(np.asarray(batch[k]).dtype)) for k in shapes}
  assert {k: (v.shape, v.dtype) for k, v in shapes.items()} == real
