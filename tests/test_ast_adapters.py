"""PETL-AST methods (jaxspeech/ast/adapters.py): identity at initialisation, what trains and what stays frozen
through the engine's optimizer groups, the trainable fraction, LoRA merging, and starting from an HF checkpoint."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import NamedSharding

from jaxspeech import sharding
from jaxspeech.ast import adapters, family, ssast
from jaxspeech.ast.adapters import PETLConfig
from jaxspeech.ast.model import AST, ASTConfig, PETLAST
from jaxspeech.ast.ssast import SSAST
from jaxspeech.convert import mapping
from jaxspeech.data import pipeline
from jaxspeech.train import init_from, optim, state as state_lib, step as step_lib
from tests.helpers import OVERRIDES, ROOT, load_config
from tests.helpers.ast import fbank, hf_model, run_inprocess

INIT_ATOL = 1e-6   # adapted vs base logits at init; every added branch is exactly zero there (measured 0.0)
MERGE_ATOL = 1e-5  # LoRA merged into the kernels vs applied on the side, float32 (measured ~1e-6)
HF_ATOL = 1e-4     # PETL model from a converted HF checkpoint vs HF's logits, float32 CPU (measured ~1e-6)

D, LAYERS, HEADS, MLP, CLASSES = 32, 2, 4, 64, 5
CFG = ASTConfig(num_classes=CLASSES, hidden=D, layers=LAYERS, heads=HEADS, mlp=MLP, num_mel_bins=32, max_frames=64,
                fstride=16, tstride=16)   # a 2×4 patch grid
METHODS = {
    "pfeiffer-parallel": PETLConfig(kind="pfeiffer", reduction=4),
    "pfeiffer-sequential": PETLConfig(kind="pfeiffer", mode="sequential", reduction=4),
    "houlsby-parallel": PETLConfig(kind="houlsby", reduction=4),
    "houlsby-sequential": PETLConfig(kind="houlsby", mode="sequential", reduction=8),
    "conformer-pfeiffer": PETLConfig(kind="pfeiffer", block="conformer", reduction=4, kernel_size=5),
    "conformer-houlsby-sequential": PETLConfig(kind="houlsby", block="conformer", mode="sequential", kernel_size=3),
    "lora-qk": PETLConfig(kind="lora", rank=4, alpha=8.0),
    "lora-qkvo": PETLConfig(kind="lora", rank=2, alpha=2.0, targets=("query", "key", "value", "out")),
    "prompt": PETLConfig(kind="prompt", prompts=3),
    "bitfit": PETLConfig(kind="bitfit"),
}


def _base_and_adapted(petl: PETLConfig) -> tuple[AST, PETLAST]:
  base = AST(CFG, nnx.Rngs(0))
  adapted = PETLAST(CFG, petl, nnx.Rngs(1))
  state = nnx.state(adapted.ast, nnx.Param)
  nnx.replace_by_pure_dict(state, nnx.to_pure_dict(nnx.state(base, nnx.Param)))
  nnx.update(adapted.ast, state)
  return base, adapted


def _perturb_added(model: PETLAST, seed: int = 0, everything: bool = False) -> None:
  """Noise on the params the method adds (not the base AST's; with `everything`, on all), so the method's
  branch is not zero."""
  state = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(state))))
  noisy = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.1 * jax.random.normal(next(keys), x.shape)
      if everything or any(p in adapters.ADDED for p in optim.param_path(path)) else x, state)
  nnx.update(model, noisy)


@pytest.mark.parametrize("name", [n for n in METHODS if n != "prompt"])
def test_adapted_model_at_init_gives_the_base_logits(name):
  base, adapted = _base_and_adapted(METHODS[name])
  x = jnp.asarray(fbank(seed=1))
  want = base(x)
  np.testing.assert_allclose(adapted(x), want, rtol=0, atol=INIT_ATOL)
  if name != "bitfit":  # the method's branch is in the forward: nonzero params move the logits
    _perturb_added(adapted)
    assert float(jnp.abs(adapted(x) - want).max()) > 1e-3


def test_prompts_are_attended_to_and_dropped_before_the_head():
  base, adapted = _base_and_adapted(METHODS["prompt"])
  x = jnp.asarray(fbank(seed=1))
  prompt_1xPxD = adapted.ast.prompt[...]
  # The same computation written out with the base model: the prompts sit after the cls and distillation
  # tokens, without positions, through every block; their outputs are dropped before the final norm.
  tokens = base.patchify(x)
  h = jnp.concatenate([jnp.broadcast_to(jnp.concatenate([base.cls_token[...], base.dist_token[...]], 1),
                                        (2, 2, D)), tokens], 1) + base.positions(x.shape[1])
  h = jnp.concatenate([h[:, :2], jnp.broadcast_to(prompt_1xPxD, (2, 3, D)), h[:, 2:]], 1)
  for block in base.blocks:
    h = block(h)
  h = base.norm(jnp.concatenate([h[:, :2], h[:, 5:]], 1))
  want = base.head(base.head_norm((h[:, 0] + h[:, 1]) / 2))
  np.testing.assert_allclose(adapted(x), want, rtol=0, atol=INIT_ATOL)
  assert float(jnp.abs(adapted(x) - base(x)).max()) > 1e-4


def _added(petl: PETLConfig) -> int:
  """Params the method adds to the AST, counted from the architecture (not from the model)."""
  b = round(D / petl.reduction)
  bottleneck = D * b + b + b * D + D
  conformer = 2 * D + D * 2 * b + 2 * b + petl.kernel_size * b + b + 2 * b + b * D + D
  adapter = conformer if petl.block == "conformer" else bottleneck
  return {"pfeiffer": LAYERS * adapter, "houlsby": LAYERS * 2 * adapter,
          "lora": LAYERS * len(petl.targets) * (D * petl.rank + petl.rank * D),
          "prompt": petl.prompts * D, "bitfit": 0}[petl.kind]


def _base_trained(petl: PETLConfig) -> int:
  """Params of the AST itself that the method trains: final norm and head, and (PETL-AST) the block norms
  next to its adapters, or (BitFit) every bias."""
  head = 2 * D + 2 * D + D * CLASSES + CLASSES                 # norm, head_norm, head
  biases = LAYERS * (3 * D + D + 2 * D + MLP + D) + D          # q, k, v, out, norm1, norm2, fc1, fc2; patch embed
  return head + {"pfeiffer": LAYERS * 2 * D, "houlsby": LAYERS * 4 * D, "bitfit": biases}.get(petl.kind, 0)


def _base_total() -> int:
  n = (CFG.num_mel_bins // 16) * (CFG.max_frames // 16)
  per_block = 4 * (D * D + D) + 4 * D + D * MLP + MLP + MLP * D + D
  return 16 * 16 * D + D + 2 * D + (n + 2) * D + LAYERS * per_block + 4 * D + D * CLASSES + CLASSES


@pytest.mark.parametrize("name", ["pfeiffer-parallel", "houlsby-sequential", "conformer-houlsby-sequential",
                                  "lora-qkvo", "prompt", "bitfit"])
def test_trainable_count_is_what_the_method_trains(name):
  petl = METHODS[name]
  model = nnx.eval_shape(lambda: PETLAST(CFG, petl, nnx.Rngs(0)))
  assert family.trainable_count(model) == (_added(petl) + _base_trained(petl), _base_total() + _added(petl))


def test_lora_merged_into_the_kernels_equals_lora_on_the_side():
  petl = METHODS["lora-qkvo"]
  base, adapted = _base_and_adapted(petl)
  _perturb_added(adapted, seed=3)
  x = jnp.asarray(fbank(seed=2))
  merged = adapters.merge_lora(nnx.to_pure_dict(nnx.state(adapted.ast, nnx.Param)), petl)
  state = nnx.state(base, nnx.Param)
  nnx.replace_by_pure_dict(state, merged)
  nnx.update(base, state)
  np.testing.assert_allclose(base(x), adapted(x), rtol=0, atol=MERGE_ATOL)


# ------------------------------------------------------------------------------------------ through the engine

def _petl_config(variant: str, corpus_path: str):
  cfg = load_config(variant=variant)
  cfg.data.path = corpus_path
  cfg.model.update(hidden=D, layers=1, heads=HEADS, mlp=MLP, num_mel_bins=32, max_frames=64)
  cfg.model.adapter.update(reduction=4, kernel_size=3, rank=2, prompts=2)
  cfg.train.update(batch_size=8, steps=10, init_from="")
  cfg.optim.warmup_steps = 0
  cfg.mesh.update(data=1, fsdp=2, tensor=2)   # the added params are sharded by the rules too
  return cfg


def _engine(cfg):
  """The engine's pieces as the trainer assembles them: (graphdef, fresh sharded state, train step, mesh)."""
  fam = family.FAMILY
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:4])
  with sharding.use_rules(mesh, [tuple(r) for r in cfg.axis_rules]):
    graphdef, abstract_params, _ = state_lib.abstract_model(fam, cfg)
    tx, schedules = optim.make(cfg.optim, cfg.train.steps, abstract_params, fam.param_groups)
    state, shardings = state_lib.create(fam, cfg, tx, mesh)
    batch_shardings = {k: NamedSharding(mesh, sharding.logical_spec(axes)) for k, axes in fam.batch_axes(cfg).items()}
    step = step_lib.make_train_step(fam, cfg, graphdef, tx, schedules, shardings, batch_shardings)
  return graphdef, state, step, batch_shardings, mesh


def _train(cfg, steps: int):
  """`steps` engine train steps (optim.make with the family's param groups, the jitted sharded step) on the
  corpus; (params before, state after, last metrics)."""
  _, state, step, batch_shardings, mesh = _engine(cfg)
  before = jax.device_get(state.params)
  batches = pipeline.make_iterator(family.make_data(cfg, "train", train=True, shard_index=0, shard_count=1))
  with sharding.use_rules(mesh, [tuple(r) for r in cfg.axis_rules]):
    for _ in range(steps):
      batch = next(batches)
      state, metrics = step(state, {k: jax.device_put(np.asarray(batch[k]), s) for k, s in batch_shardings.items()})
  return before, jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("variant", ["adapter_pfeiffer", "adapter_houlsby", "conformer_adapter", "lora", "prompt",
                                     "bitfit"])
def test_training_changes_only_the_trainable_params(variant, corpus_path):
  cfg = _petl_config(variant, corpus_path)
  before, after, metrics = _train(cfg, steps=2)
  flat_before = {optim.param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(before)}
  flat_after = {optim.param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(after.params)}
  kind = cfg.model.adapter.kind
  trainable = {p for p in flat_before if family.param_groups(p, None) == "default"}
  assert {p[0] for p in flat_before} == {kind} and trainable and len(trainable) < len(flat_before)
  for path, x in flat_before.items():
    if path in trainable:
      assert not np.array_equal(flat_after[path], x), f"{path} did not train"
    else:
      np.testing.assert_array_equal(flat_after[path], x, err_msg=f"frozen {path} changed")
  # Frozen params have no optimizer state: Adam's moments hold exactly the trainable elements.
  moments = [s.mu for s in jax.tree.leaves(after.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
  assert sum(x.size for m in moments for x in jax.tree.leaves(m)) == sum(flat_before[p].size for p in trainable)
  n_trainable, n_total = family.trainable_count(nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0))))
  assert n_trainable == sum(flat_before[p].size for p in trainable)
  np.testing.assert_allclose(metrics["trainable_fraction"], n_trainable / n_total, rtol=1e-6)


def test_plain_configs_train_everything():
  cfg = load_config(variant="tiny")
  model = nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0)))
  paths = [optim.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))]
  assert {family.param_groups(p, None) for p in paths} == {"default"}


# ------------------------------------------------------------------------------ from a converted HF checkpoint

@pytest.mark.slow
def test_petl_model_from_a_converted_hf_checkpoint_gives_its_logits(tmp_path, capsys):
  hf = hf_model()
  hf.save_pretrained(tmp_path / "hf")
  code, _, err = run_inprocess(capsys, "--from", "hf", "--src", tmp_path / "hf", "--dst", tmp_path / "wd")
  assert code == 0, err
  with open(tmp_path / "wd" / "config.json") as f:
    model = json.load(f)["model"]
  cfg = load_config(variant="adapter_houlsby")
  cfg.model.update(**{k: v for k, v in model.items() if k in cfg.model})
  cfg.train.init_from = str(tmp_path / "wd")
  cfg.mesh.update(data=1, fsdp=2, tensor=2)
  x = fbank()
  with torch.no_grad():
    want = hf(torch.from_numpy(x)).logits.numpy()
  graphdef, state, _, _, _ = _engine(cfg)
  state = init_from.apply(state, family.FAMILY, cfg)   # as the trainer starts a run with train.init_from
  adapted = nnx.merge(graphdef, state.params, state.rest)
  assert isinstance(adapted, PETLAST)
  np.testing.assert_allclose(adapted(jnp.asarray(x)), want, rtol=0, atol=HF_ATOL)
  # Another label set: the head is left out with train.init_skip, everything else still comes from HF.
  cfg.model.num_classes = 7
  graphdef, state, _, _, _ = _engine(cfg)
  with pytest.raises(ValueError, match=r"shape mismatch houlsby\.head\.kernel"):
    init_from.apply(state, family.FAMILY, cfg)
  cfg.train.init_skip = r"head\."
  fresh = jax.device_get(state.params["houlsby"]["head"]["kernel"][...])
  state = jax.device_get(init_from.apply(state, family.FAMILY, cfg).params["houlsby"])
  np.testing.assert_array_equal(state["head"]["kernel"][...], fresh)
  np.testing.assert_array_equal(state["head_norm"]["scale"][...], hf.classifier.layernorm.weight.detach().numpy())


def test_ssast_run_params_map_into_a_petl_model():
  cfg = _petl_config("lora", corpus_path="unused")
  source_cfg = dataclasses.replace(family.model_config(cfg), num_classes=0)   # 2×4 patches, stride = patch
  pretrained = mapping.flatten(nnx.to_pure_dict(nnx.state(SSAST(source_cfg, nnx.Rngs(0)), nnx.Param)))
  source = {"family": "ast", "model": {**dataclasses.asdict(source_cfg), "task": "ssast"}}
  cfg.model.max_frames = 96                                                    # 2×6 patches here
  adapted = family.adapt_init(pretrained, source, cfg)
  shapes = mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0))), nnx.Param))
  assert set(adapted) == {k for k in shapes if not k.startswith(("lora.head", "lora.blocks.0.attn.lora."))}
  assert all(tuple(v.shape) == shapes[k] for k, v in adapted.items())
  np.testing.assert_array_equal(adapted["lora.blocks.0.fc1.kernel"], pretrained["encoder.blocks.0.fc1.kernel"])
  np.testing.assert_array_equal(adapted["lora.pos_embed"], ssast.resize_positions(
      pretrained["encoder.pos_embed"], (2, 4), (2, 6)))


def _petl_workdir(path, model: PETLAST, petl: PETLConfig) -> None:
  """A workdir as the trainer writes it for a PETL run: config.json and a checkpoint holding `params`."""
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"family": "ast", "model": {**dataclasses.asdict(CFG), "task": "classify",
                                          "adapter": dataclasses.asdict(petl)}}, f)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(path, "checkpoints", "1", "state"), {"params": nnx.state(model, nnx.Param)})
  checkpointer.wait_until_finished()


@pytest.mark.parametrize("name", ["lora-qkvo", "bitfit"])
def test_bitfit_and_lora_runs_export_to_hf_with_their_logits(name, tmp_path, capsys):
  petl = METHODS[name]
  _, adapted = _base_and_adapted(petl)
  _perturb_added(adapted, seed=4, everything=name == "bitfit")
  _petl_workdir(tmp_path / "wd", adapted, petl)
  code, _, err = run_inprocess(capsys, "--to", "hf", "--src", tmp_path / "wd", "--dst", tmp_path / "hf")
  assert code == 0, err
  hf = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "hf").eval()
  x = fbank(seed=5)
  with torch.no_grad():
    got = hf(torch.from_numpy(x)).logits.numpy()
  np.testing.assert_allclose(got, adapted(jnp.asarray(x)), rtol=0, atol=HF_ATOL)


def test_adapter_runs_are_not_exported(tmp_path, capsys):
  petl = METHODS["houlsby-parallel"]
  _petl_workdir(tmp_path / "wd", PETLAST(CFG, petl, nnx.Rngs(0)), petl)
  code, _, err = run_inprocess(capsys, "--to", "hf", "--src", tmp_path / "wd", "--dst", tmp_path / "hf")
  assert code == 2 and "a houlsby run adds modules a plain AST does not have" in err, err
  assert not os.path.exists(tmp_path / "hf")


# ------------------------------------------------------------------------------------------ the CLI, as users run it

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["conformer_adapter", "lora"])   # every variant's config: the engine test above
def test_petl_variant_trains_from_the_cli(variant, corpus_path, tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "train", f"--config=configs/ast.py:{variant}", f"--workdir={tmp_path}",
       f"--config.data.path={corpus_path}", "--config.train.init_from=", *OVERRIDES, "--config.train.steps=2"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"PETL {load_config(variant=variant).model.adapter.kind}:" in proc.stdout
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [line for line in map(json.loads, f) if "loss" in line]
  assert [m["step"] for m in steps] == [1, 2] and all(0 < m["trainable_fraction"] < 0.5 for m in steps)
