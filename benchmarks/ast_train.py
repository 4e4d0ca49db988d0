"""AST training-step throughput: jaxspeech's jitted train step vs transformers' ASTForAudioClassification in PyTorch.

    .venv/bin/python benchmarks/ast_train.py [--write] [--variants] [--blocks 3] [--steps 7]

Same model shape, batch, loss, clipping and AdamW on both sides, fp32, on this machine's CPU:
  model    hidden 256, 4 layers, 4 heads, MLP 1024, 16 classes, 16×16 patches at stride 16/16 (130 tokens)
           and at AST's default stride 10/10 (overlapping, 302 tokens)
  input    a precomputed normalised fbank (8, 256 frames, 128 mel) and integer labels, fed to both models
           (the Kaldi fbank is not part of the timed step)
  jax      `jaxspeech.train.step.make_train_step` (the trainer's step: value_and_grad, global norm, the
           non-finite guard, clip → AdamW from `jaxspeech.train.optim.make`, state donation) over a family
           whose loss reads `batch["fbank"]`; a 1-device mesh (no fake host devices)
  torch    `ASTForAudioClassification(ASTConfig(...))` in train mode with dropout 0, CrossEntropyLoss,
           `clip_grad_norm_(1.0)` and `torch.optim.AdamW` with the same hyper-parameters and weight-decay
           groups (decay on params with ndim > 1, as `optim.decay_mask`)

Both sides are warmed up (JAX compiles), then timed in alternating blocks (JAX, torch, repeated `--blocks`
times) of `--steps` steps each, so machine noise hits both; figures are medians over all timed steps. Forward
is the loss alone (jitted for JAX, under `torch.no_grad()` for torch).

`--variants` also times candidate changes to the step (each reimplemented here, the library untouched), and
XLA CPU flags (each in a subprocess, since XLA_FLAGS is read once per process).
Prints a markdown table; `--write` replaces the AST section of benchmarks/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

SECTION = "AST training step (Foundation II)"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, FRAMES, MEL, CLASSES = 8, 256, 128, 16
SHAPE = dict(hidden=256, layers=4, heads=4, mlp=1024)
LR, CLIP = 1e-4, 1.0
THREADS = 2

if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


# ----------------------------------------------------------------------------------------------------- JAX side

def jax_config(stride: int, heads: int = SHAPE["heads"]):
  import importlib.util
  spec = importlib.util.spec_from_file_location("configs_ast", os.path.join(ROOT, "configs", "ast.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("tiny")
  cfg.model.update(hidden=SHAPE["hidden"], layers=SHAPE["layers"], heads=heads, mlp=SHAPE["mlp"],
                   num_classes=CLASSES, num_mel_bins=MEL, max_frames=FRAMES, fstride=stride, tstride=stride,
                   dtype="float32")
  cfg.mesh.data = 1
  cfg.train.batch_size = BATCH
  cfg.optim.update(lr=LR, schedule="constant", warmup_steps=0, clip_norm=CLIP, weight_decay=0.01)
  return cfg


def fbank_family(build_model=None):
  """The AST family with its loss on a precomputed `batch["fbank"]` (as ast.family's, minus the Kaldi fbank)."""
  import dataclasses
  import jax.numpy as jnp
  import optax
  from jaxspeech.ast import family as ast_family

  def loss(model, batch, key, cfg):
    del key, cfg
    logits_BxC = model(batch["fbank"])
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["label"])
    return ce_B.mean(), {"accuracy": (jnp.argmax(logits_BxC, -1) == batch["label"]).mean()}

  def batch_axes(cfg):
    del cfg
    return {"fbank": ("activation_batch", None, None), "label": ("activation_batch",)}

  fam = dataclasses.replace(ast_family.FAMILY, loss=loss, batch_axes=batch_axes)
  if build_model is not None:
    fam = dataclasses.replace(fam, build_model=build_model)
  return fam


def inputs(seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(BATCH, FRAMES, MEL)).astype(np.float32),
          rng.integers(0, CLASSES, size=(BATCH,)).astype(np.int32))


class JaxSide:
  """A compiled train step and forward on a 1-device mesh; `variant` picks a candidate change (see VARIANTS)."""

  def __init__(self, stride: int, variant: str = "library", heads: int = SHAPE["heads"]):
    import jax
    from flax import nnx
    from jaxspeech import sharding
    from jaxspeech.train import optim, state as state_lib, step as step_lib
    from jax.sharding import NamedSharding

    self.cfg = cfg = jax_config(stride, heads)
    patches = VARIANTS[variant]
    with patches():
      fam = fbank_family()
      self.mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
      rules = [tuple(r) for r in cfg.axis_rules]
      with sharding.use_rules(self.mesh, rules):
        graphdef, abstract_params, _ = state_lib.abstract_model(fam, cfg)
        tx, schedules = optim.make(cfg.optim, cfg.train.steps, abstract_params, fam.param_groups)
        self.state, shardings = state_lib.create(fam, cfg, tx, self.mesh)
        batch_shardings = {k: NamedSharding(self.mesh, sharding.logical_spec(a))
                           for k, a in fam.batch_axes(cfg).items()}
        make = step_lib.make_train_step if variant not in STEP_VARIANTS else STEP_VARIANTS[variant]
        self.step = make(fam, cfg, graphdef, tx, schedules, shardings, batch_shardings)
        fbank, label = inputs()
        self.batch = {"fbank": jax.device_put(fbank, batch_shardings["fbank"]),
                      "label": jax.device_put(label, batch_shardings["label"])}
        self.forward = jax.jit(lambda params, rest, batch: fam.loss(nnx.merge(graphdef, params, rest), batch,
                                                                     None, cfg)[0])
        t0 = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.step = self.compiled
    self.params_count = sum(x.size for x in jax.tree.leaves(self.state.params))

  def train_step(self) -> float:
    import jax
    t0 = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - t0

  def forward_step(self) -> float:
    t0 = time.perf_counter()
    self.forward(self.state.params, self.state.rest, self.batch).block_until_ready()
    return time.perf_counter() - t0

  def loss(self) -> float:
    return float(self.forward(self.state.params, self.state.rest, self.batch))


# --------------------------------------------------------------------------------------------------- torch side

class TorchSide:
  def __init__(self, stride: int, heads: int = SHAPE["heads"], foreach: bool | None = None):
    import torch
    import transformers
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    hf = transformers.ASTConfig(
        hidden_size=SHAPE["hidden"], num_hidden_layers=SHAPE["layers"], num_attention_heads=heads,
        intermediate_size=SHAPE["mlp"], max_length=FRAMES, num_mel_bins=MEL, patch_size=16,
        frequency_stride=stride, time_stride=stride, num_labels=CLASSES, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)
    self.model = transformers.ASTForAudioClassification(hf).train()
    self.attn = self.model.config._attn_implementation
    decay = [p for p in self.model.parameters() if p.ndim > 1]
    no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                 lr=LR, betas=(0.9, 0.999), eps=1e-8, foreach=foreach)
    self.loss_fn = torch.nn.CrossEntropyLoss()
    fbank, label = inputs()
    self.x, self.y = torch.from_numpy(fbank), torch.from_numpy(label).long()
    self.threads = torch.get_num_threads()

  def train_step(self) -> float:
    import torch
    t0 = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss_fn(self.model(self.x).logits, self.y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
    self.opt.step()
    return time.perf_counter() - t0

  def forward_step(self) -> float:
    import torch
    t0 = time.perf_counter()
    with torch.no_grad():
      self.loss_fn(self.model(self.x).logits, self.y)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ candidate variants

import contextlib  # noqa: E402


@contextlib.contextmanager
def _no_patch():
  yield


def _patched(obj, name, value):
  @contextlib.contextmanager
  def ctx():
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
      yield
    finally:
      setattr(obj, name, old)
  return ctx


def _attention_bhlk(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxHxLxS=None):
  """Heads-major attention: transpose q/k/v to (b, h, l, k) once, then batched matmuls with no inner transposes."""
  import jax
  import jax.numpy as jnp
  scale = q_BxLxHxK.shape[-1] ** -0.5
  q = jnp.swapaxes(q_BxLxHxK * scale, 1, 2)
  k = jnp.swapaxes(k_BxSxHxK, 1, 2)
  v = jnp.swapaxes(v_BxSxHxK, 1, 2)
  logits = jnp.einsum("bhlk,bhsk->bhls", q, k, preferred_element_type=jnp.float32)
  if mask_BxHxLxS is not None:
    logits = jnp.where(mask_BxHxLxS, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.swapaxes(jnp.einsum("bhls,bhsk->bhlk", probs, v), 1, 2)


def _patch_conv_as_matmul():
  """nnx.Conv with stride == kernel and VALID padding computed as reshape + matmul (same params)."""
  from flax import nnx
  import jax.numpy as jnp

  original = nnx.Conv.__call__

  def call(self, x):
    kh, kw = self.kernel_size
    if tuple(self.strides) != (kh, kw) or self.padding != "VALID" or x.ndim != 4:
      return original(self, x)
    b, h, w, c = x.shape
    fh, fw = h // kh, w // kw
    x = x[:, :fh * kh, :fw * kw].reshape(b, fh, kh, fw, kw, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = self.kernel[...].reshape(kh * kw * c, -1)
    y = x.reshape(b, fh, fw, kh * kw * c).astype(self.dtype) @ kernel.astype(self.dtype)
    return y + self.bias[...].astype(self.dtype)

  return _patched(nnx.Conv, "__call__", call)


def _gelu_tanh():
  import jax
  from jaxspeech.ast import model
  gelu = jax.nn.gelu

  class Shim:
    def __getattr__(self, name):
      return getattr(jax.nn, name)

    @staticmethod
    def gelu(x, approximate=False):
      del approximate
      return gelu(x, approximate=True)

  class JaxShim:
    nn = Shim()

    def __getattr__(self, name):
      return getattr(jax, name)

  return _patched(model, "jax", JaxShim())


def _select_step(family, cfg, graphdef, tx, schedules, state_shardings, batch_shardings):
  """make_train_step with the non-finite guard as a select on the new state instead of lax.cond."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from jaxspeech.train import optim

  def loss_fn(params, rest, batch, key):
    return family.loss(nnx.merge(graphdef, params, rest), batch, key, cfg)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = grad_fn(state.params, state.rest, batch, key)
    grad_norm = optim.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}
    return state.replace(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state)), metrics

  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=0)


def _no_constrain():
  from jaxspeech.ast import model
  return _patched(model, "constrain", lambda x, names: x)


def _combine(*ctxs):
  @contextlib.contextmanager
  def ctx():
    with contextlib.ExitStack() as stack:
      for c in ctxs:
        stack.enter_context(c() if callable(c) else c)
      yield
  return ctx


def _lazy(factory):
  @contextlib.contextmanager
  def ctx():
    with factory()():
      yield
  return ctx


VARIANTS = {
    "library": _no_patch,
    "select guard": _no_patch,
    "attention (b,h,l,k)": lambda: _patched(__import__("jaxspeech.nn.layers", fromlist=["x"]),
                                            "dot_product_attention", _attention_bhlk)(),
    "patch conv as matmul": lambda: _patch_conv_as_matmul()(),
    "tanh GELU": lambda: _gelu_tanh()(),
    "no sharding constraints": lambda: _no_constrain()(),
}
STEP_VARIANTS = {"select guard": _select_step}


# ------------------------------------------------------------------------------------------------------ timing

def timed_blocks(sides: dict, what: str, blocks: int, steps: int) -> dict[str, list[float]]:
  times = {name: [] for name in sides}
  for _ in range(blocks):
    for name, side in sides.items():
      fn = getattr(side, what)
      times[name] += [fn() for _ in range(steps)]
  return times


def median_ms(ts: list[float]) -> float:
  return 1e3 * statistics.median(ts)


def machine() -> str:
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M).group(1).strip()
  except (OSError, subprocess.CalledProcessError, AttributeError):
    model = platform.processor() or platform.machine()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{model}, {cores} cores, no accelerator (JAX CPU backend)"


def versions() -> str:
  from importlib import metadata
  names = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy")
  return ", ".join(f"{n} {metadata.version(n)}" for n in names) + f", Python {platform.python_version()}"


if __name__ == "__main__":
  pass
