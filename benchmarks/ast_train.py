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

  def __init__(self, stride: int, variant: str = "library", heads: int = SHAPE["heads"], with_grad: bool = True):
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
        forward = jax.jit(lambda params, rest, batch: fam.loss(nnx.merge(graphdef, params, rest), batch, None, cfg)[0])
        self.forward = forward.lower(self.state.params, self.state.rest, self.batch).compile()
        if with_grad:  # value_and_grad of the loss alone: the step minus clipping, AdamW and the guard
          grad = jax.jit(jax.grad(lambda params, rest, batch: fam.loss(nnx.merge(graphdef, params, rest), batch,
                                                                        None, cfg)[0]))
          self.grad = grad.lower(self.state.params, self.state.rest, self.batch).compile()
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

  def grad_step(self) -> float:
    import jax
    t0 = time.perf_counter()
    jax.block_until_ready(self.grad(self.state.params, self.state.rest, self.batch))
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

  def grad_step(self) -> float:
    t0 = time.perf_counter()
    self.opt.zero_grad(set_to_none=True)
    self.loss_fn(self.model(self.x).logits, self.y).backward()
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


def layers_module():
  from jaxspeech.nn import layers
  return layers


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


def _gelu_shim(gelu):
  """Patches `jax.nn.gelu` as seen by jaxspeech.ast.model (the library and jax stay untouched)."""
  import jax
  from jaxspeech.ast import model

  class Nn:
    def __getattr__(self, name):
      return getattr(jax.nn, name)

  class Jax:
    def __getattr__(self, name):
      return getattr(jax, name)

  shim = Jax()
  shim.nn = Nn()
  shim.nn.gelu = gelu
  return _patched(model, "jax", shim)


def exact_gelu_saving_input():
  """jax.nn.gelu(approximate=False) (same forward: 0.5·x·erfc(−x/√2)) with a custom VJP that saves only x and
  computes the derivative Φ(x) + x·φ(x) in the backward pass, instead of autodiff's erfc and exp residuals."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  sqrt_half, inv_sqrt_2pi = np.float32(np.sqrt(0.5)), np.float32(1 / np.sqrt(2 * np.pi))

  @jax.custom_vjp
  def gelu(x):
    return 0.5 * x * jax.lax.erfc(-x * sqrt_half)

  def fwd(x):
    return gelu(x), x

  def bwd(x, g):
    return (g * (0.5 * jax.lax.erfc(-x * sqrt_half) + x * inv_sqrt_2pi * jnp.exp(-0.5 * x * x)),)

  gelu.defvjp(fwd, bwd)
  return lambda x, approximate=False: gelu(x)


def _gelu_erf():
  """Exact GELU as 0.5·x·(1 + erf(x/√2)) (PyTorch's formula) instead of jax.nn.gelu's 0.5·x·erfc(−x/√2)."""
  import jax
  import numpy as np
  return _gelu_shim(lambda x, approximate=False: 0.5 * x * (1 + jax.lax.erf(x * np.float32(np.sqrt(0.5)))))


def _fused_qkv():
  """Attention with one (embed → 3·heads·kv) projection instead of three (different params, same FLOPs)."""
  import jax.numpy as jnp
  from flax import nnx
  from jaxspeech.ast import model
  from jaxspeech.nn import layers

  class Attention(nnx.Module):
    def __init__(self, cfg, rngs):
      d, h, dtype = cfg.hidden, cfg.heads, jnp.dtype(cfg.dtype)
      self.qkv = layers.dense(d, (3, h, d // h), ("embed", None, "heads", "kv"), rngs=rngs, dtype=dtype)
      self.out = layers.dense((h, d // h), d, ("heads", "kv", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x_BxLxD):
      qkv_BxLx3xHxK = self.qkv(x_BxLxD)
      q, k, v = (qkv_BxLx3xHxK[:, :, i] for i in range(3))
      return self.out(layers.dot_product_attention(q, k, v))

  return _patched(model, "Attention", Attention)


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


VARIANTS = {  # name → context manager factory active while the model is traced and compiled
    "library": _no_patch,
    "select guard": _no_patch,
    "attention bhlk": _patched(layers_module(), "dot_product_attention", _attention_bhlk),
    "fused qkv": lambda: _fused_qkv()(),
    "patch conv as matmul": lambda: _patch_conv_as_matmul()(),
    "erf GELU": lambda: _gelu_erf()(),
    "GELU custom VJP": lambda: _gelu_shim(exact_gelu_saving_input())(),
    "no sharding constraints": lambda: _no_constrain()(),
}
STEP_VARIANTS = {"select guard": _select_step}


# ------------------------------------------------------------------------------------------------------ timing

class CpuShare:
  """The share of the machine's CPU time that other processes used since `__init__` (from /proc/stat)."""

  def __init__(self):
    self._start = self._sample()

  @staticmethod
  def _sample():
    try:
      with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
      return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(ticks) - ticks[3] - ticks[4]) / hz  # all but idle and iowait
    mine = sum(os.times()[:4])
    return busy, sum(ticks) / hz, mine

  def other(self) -> float | None:
    end = self._sample()
    if end is None or self._start is None:
      return None
    busy, total, mine = (e - s for e, s in zip(end, self._start))
    return max(busy - mine, 0.0) / max(total, 1e-9)


def wait_quiet(max_other: float, limit_s: float) -> float:
  """Waits (up to `limit_s`) for a half-second in which other processes used at most `max_other` of the CPU."""
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < limit_s:
    share = CpuShare()
    time.sleep(0.5)
    if (share.other() or 0.0) <= max_other:
      break
  return time.perf_counter() - t0


def timed_blocks(sides: dict, what: str, blocks: int, steps: int, max_other: float, retries: int,
                 wait_s: float = 20.0):
  """{name: step times} over `blocks` rounds of `steps` calls per side, and the largest share of the CPU that
  other processes used during a kept block. Each block starts after a quiet half-second (waiting up to
  `wait_s`); a block during which other processes used more than `max_other` of the CPU is run again (up to
  `retries` times)."""
  times, worst = {name: [] for name in sides}, 0.0
  for _ in range(blocks):
    for name, side in sides.items():
      fn = getattr(side, what)
      for attempt in range(retries + 1):
        wait_quiet(max_other / 2, wait_s)
        share = CpuShare()
        block = [fn() for _ in range(steps)]
        other = share.other() or 0.0
        if other <= max_other or attempt == retries:
          break
      times[name] += block
      worst = max(worst, other)
  return times, worst


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


FLAG_SETS = {  # name → XLA_FLAGS for a child process (XLA reads them once per process)
    "default flags": "",
    "XLA's own dots, not YNNPACK's": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
    "no YNNPACK (dots, convolutions, reductions)":
        "--xla_cpu_experimental_ynn_fusion_type=-individual_dot,-individual_convolution,-reduce",
    "YNNPACK dot + elementwise fusions": "--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise",
}


def child(args) -> None:
  """`--child`: times the library step (train and forward) under this process's XLA_FLAGS; prints JSON."""
  side = JaxSide(args.child_stride, "library", with_grad=False)
  for _ in range(2):
    side.train_step()
    side.forward_step()
  sides = {"jax": side}
  train, other_t = timed_blocks(sides, "train_step", args.blocks, args.variant_steps, args.max_other, args.retries)
  fwd, other_f = timed_blocks(sides, "forward_step", args.blocks, args.variant_steps, args.max_other, args.retries)
  print(json.dumps({"train": train["jax"], "forward": fwd["jax"], "other": max(other_t, other_f),
                    "compile_s": side.compile_s, "loss": side.loss()}))


def run_child(flags: str, args) -> dict:
  env = dict(os.environ, XLA_FLAGS=flags)
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--child-stride", "16", "--blocks", str(args.blocks),
         "--variant-steps", str(args.variant_steps), "--max-other", str(args.max_other), "--retries", str(args.retries)]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def tokens(stride: int) -> int:
  return ((MEL - 16) // stride + 1) * ((FRAMES - 16) // stride + 1) + 2


def main_table(rows: list[dict]) -> str:
  out = ["| patches | side | step ms | samples/s | forward ms | fwd+bwd ms | backward / forward | clip+AdamW ms "
         "| jax/torch samples/s |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    ratio = f"**{r['ratio']:.2f}×**" if "ratio" in r else ""
    out.append(f"| {r['case']} | {r['side']} | {r['step']:.1f} | {BATCH / r['step'] * 1e3:.1f} | {r['fwd']:.1f} | "
               f"{r['grad']:.1f} | {(r['grad'] - r['fwd']) / r['fwd']:.2f} | {r['step'] - r['grad']:.1f} | {ratio} |")
  return "\n".join(out) + "\n"


def variant_table(rows: list[dict]) -> str:
  out = ["| stride 16/16, jaxspeech step with | step ms | vs library step | forward ms | vs library forward |",
         "|---|---:|---:|---:|---:|"]
  for r in rows:
    out.append(f"| {r['name']} | {r['step']:.1f} | {r['step'] / r['base_step'] - 1:+.1%} | {r['fwd']:.1f} | "
               f"{r['fwd'] / r['base_fwd'] - 1:+.1%} |")
  return "\n".join(out) + "\n"


def run(args) -> dict:
  import torch
  result = {"main": [], "variants": [], "flags": [], "other": 0.0, "compile": {}}
  library16 = None
  for stride in args.strides:
    case = f"16×16 stride {stride}/{stride} ({tokens(stride)} tokens)"
    jax_side = JaxSide(stride, "library", heads=args.heads)
    torch_side = TorchSide(stride, heads=args.heads)
    result["torch_threads"], result["torch_attention"] = torch_side.threads, torch_side.attn
    result["compile"][stride] = jax_side.compile_s
    sides = {"jaxspeech": jax_side, "torch": torch_side}
    for side in sides.values():
      for _ in range(2):
        side.train_step()
        side.grad_step()
        side.forward_step()
    figures = {}
    for what in ("train_step", "grad_step", "forward_step"):
      times, other = timed_blocks(sides, what, args.blocks, args.steps, args.max_other, args.retries)
      result["other"] = max(result["other"], other)
      for name, ts in times.items():
        figures.setdefault(name, {})[what] = median_ms(ts)
        figures[name].setdefault("n", len(ts))
    for name in sides:
      f = figures[name]
      result["main"].append({"case": case if name == "jaxspeech" else "", "side": name, "step": f["train_step"],
                             "grad": f["grad_step"], "fwd": f["forward_step"], "n": f["n"]})
    result["main"][-1]["ratio"] = figures["torch"]["train_step"] / figures["jaxspeech"]["train_step"]
    print(main_table(result["main"]), file=sys.stderr)
    if stride == 16:
      library16 = jax_side
    del torch_side
  torch.set_num_threads(THREADS)

  if args.variants and library16 is not None:
    sides = {"library": library16}
    for name in VARIANTS:
      if name != "library":
        sides[name] = JaxSide(16, name, heads=args.heads, with_grad=False)
    for side in sides.values():
      side.train_step()
      side.forward_step()
    train, other_t = timed_blocks(sides, "train_step", args.blocks, args.variant_steps, args.max_other, args.retries)
    fwd, other_f = timed_blocks(sides, "forward_step", args.blocks, args.variant_steps, args.max_other, args.retries)
    result["other"] = max(result["other"], other_t, other_f)
    base_step, base_fwd = median_ms(train["library"]), median_ms(fwd["library"])
    for name in sides:
      result["variants"].append({"name": name, "step": median_ms(train[name]), "fwd": median_ms(fwd[name]),
                                 "base_step": base_step, "base_fwd": base_fwd})
    print(variant_table(result["variants"]), file=sys.stderr)
    flags = {}
    for name, value in FLAG_SETS.items():
      flags[name] = run_child(value, args)
      result["other"] = max(result["other"], flags[name]["other"])
    base = flags["default flags"]
    for name, f in flags.items():
      result["flags"].append({"name": f"{name} (`{FLAG_SETS[name]}`)" if FLAG_SETS[name] else name,
                              "step": median_ms(f["train"]), "fwd": median_ms(f["forward"]),
                              "base_step": median_ms(base["train"]), "base_fwd": median_ms(base["forward"])})
    print(variant_table(result["flags"]), file=sys.stderr)
  return result


def section(result: dict, args, load: float, seconds: float) -> str:
  today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()  # = `date -u +%F`
  n = result["main"][0]["n"]
  text = f"""## {SECTION}

Written by `benchmarks/ast_train.py --write` ({seconds:.0f} s).

- Date: {today} (UTC)
- Machine: {machine()}; load average {load:.2f} before the run; other processes used at most
  {100 * result['other']:.0f} % of the CPU during a kept timing block
- Software: {versions()}; torch threads {result['torch_threads']} (`torch.get_num_threads()`), HF attention
  `{result['torch_attention']}`
- Model: AST hidden {SHAPE['hidden']}, {SHAPE['layers']} layers, {args.heads} heads, MLP {SHAPE['mlp']}, {CLASSES} classes, fp32;
  input a precomputed fbank {BATCH}×{FRAMES}×{MEL} (batch × frames × mel) fed to both models; lr {LR:g}, AdamW
  (0.9, 0.999, eps 1e-8, weight decay 0.01 on params with ndim > 1), global-norm clip {CLIP:g}
- jaxspeech: `make_train_step` (the trainer's jitted step, donated state, non-finite guard) on a 1-device mesh
  (no fake host devices); compile {', '.join(f'{v:.1f} s (stride {k})' for k, v in result['compile'].items())}
- torch: `ASTForAudioClassification` in train mode, dropout 0, `CrossEntropyLoss`, `clip_grad_norm_`,
  `torch.optim.AdamW` (default implementation)

{main_table(result['main'])}
Medians of {n} steps per cell, timed in {args.blocks} alternating blocks of {args.steps} (jaxspeech, torch, ...) after
warm-up. "forward" is the loss alone (jitted; `torch.no_grad()`), "fwd+bwd" the loss and its gradients without
the optimizer; backward / forward = (fwd+bwd − forward) / forward; clip+AdamW = step − fwd+bwd (for jaxspeech also
the non-finite guard and the metrics).
"""
  if result["variants"]:
    text += f"""
Candidate changes to the jaxspeech step (implemented in the benchmark only; medians of
{args.blocks}×{args.variant_steps} steps in blocks alternating with the library step):

{variant_table(result['variants'])}
XLA CPU flags (each in its own process, same library step; medians of {args.blocks}×{args.variant_steps} steps):

{variant_table(result['flags'])}"""
  return text + NOTES


NOTES = """
Notes:
- The machine is shared: a timing block during which other processes used more than 10 % of the CPU is
  rerun (up to 3 times) after waiting for a quiet half-second. PyTorch's OpenMP threads suffer far more than
  XLA's from other load on 2 cores (steps of 1–2.5 s instead of 0.18 s were seen), so figures taken under
  load are not comparable.
"""


HEADER = """# Benchmark results

Speed figures measured by the scripts in `benchmarks/`. Each section is written by the script named in it
(`--write` replaces that section and leaves the others alone) and states the machine or accelerator card, the
library versions and the date (UTC) of its figures. Figures from different machines are not comparable;
rerun a script on your machine before comparing against it.
"""


def write_section(text: str, path: str = RESULTS) -> None:
  """Replaces this script's section of RESULTS.md (re-read just before writing), or appends it."""
  current = open(path).read() if os.path.exists(path) else HEADER
  pattern = re.compile(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
  if pattern.search(current):
    updated = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", current).rstrip("\n") + "\n"
  else:
    updated = current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
  tmp = path + ".ast_train.tmp"
  with open(tmp, "w") as f:
    f.write(updated)
  os.replace(tmp, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--strides", type=int, nargs="+", default=[16, 10])
  parser.add_argument("--heads", type=int, default=SHAPE["heads"])
  parser.add_argument("--blocks", type=int, default=3)
  parser.add_argument("--steps", type=int, default=7, help="steps per block in the main table")
  parser.add_argument("--variant-steps", type=int, default=4, help="steps per block for variants and flags")
  parser.add_argument("--no-variants", dest="variants", action="store_false")
  parser.add_argument("--max-other", type=float, default=0.1)
  parser.add_argument("--retries", type=int, default=3)
  parser.add_argument("--write", action="store_true", help=f"replace the section in {os.path.relpath(RESULTS)}")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--child-stride", type=int, default=16, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  result = run(args)
  text = section(result, args, load, time.perf_counter() - t0)
  print(text)
  if args.write:
    write_section(text)
    print(f"wrote the section {SECTION!r} of {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
  main()
