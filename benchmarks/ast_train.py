"""AST training-step throughput: jaxspeech's jitted train step vs transformers' ASTForAudioClassification in PyTorch.

    .venv/bin/python benchmarks/ast_train.py [--write] [--flags] [--no-variants] [--no-malloc] [--dump-hlo DIR]

Same model, batch, loss, clipping and AdamW on both sides, float32, on this machine's CPU, in one run:
  model    hidden 256, 4 layers, 4 heads, MLP 1024, 16 classes; 16×16 patches at stride 16/16 (130 tokens) and at
           AST's default stride 10/10 (overlapping, 302 tokens)
  input    a precomputed normalised fbank (8, 256 frames, 128 mel) and integer labels, fed to both models
           (the Kaldi fbank is not part of the timed step)
  jax      `jaxspeech.train.step.make_train_step` (the trainer's step: value_and_grad, global norm, the
           non-finite guard, clip → AdamW from `jaxspeech.train.optim.make`, state donation) over the AST model of
           `configs/ast.py:tiny` at these shapes (attention in blocks of ≤ 1 MiB of logits; the last block computes
           the two pooled tokens only) with a loss that reads `batch["fbank"]`; a 1-device mesh
  torch    `ASTForAudioClassification(ASTConfig(...))` in train mode with dropout 0, CrossEntropyLoss,
           `clip_grad_norm_(1.0)` and `torch.optim.AdamW` with the same hyper-parameters and weight-decay groups
           (decay on params with ndim > 1, as `optim.decay_mask`); `torch.set_num_threads(2)`

Both sides are warmed up (JAX compiles), then timed in rounds of one call per side (jaxspeech, torch, repeated
`--rounds` times); times are medians and the speed ratio is the median of the rounds' ratios, so the machine's
slow drifts cancel. Forward is the loss alone, clip+AdamW the optimizer part
alone; backward is the rest of the step.

Both sides run under the glibc malloc tunables that `jaxspeech train` uses (jaxspeech/train/host.py): the script
re-executes itself with them. Also measured: the stride-16 comparison again in a child process with glibc's default
malloc (XLA's per-call temp buffer is then mmapped and page-faulted in on every step); the library's own choices
switched off and candidate changes to the step (VARIANTS, set up here with the library untouched, timed as paired
ratios to the library step); with `--flags`, XLA CPU flags (one child process
each, since XLA reads XLA_FLAGS once per process). `--dump-hlo DIR` writes the optimised HLO of the step and forward.
Prints markdown; `--write` replaces this script's section of benchmarks/RESULTS.md and leaves the others alone.
"""

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import common
from jaxspeech.train import host

SECTION = "AST training step (Foundation II)"
RESULTS = common.RESULTS
VERSIONS = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "numpy")
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


def fbank_family():
  """The AST family with its loss on a precomputed `batch["fbank"]` (as ast.family's, minus the Kaldi fbank)."""
  import dataclasses
  import jax.numpy as jnp
  import optax
  from jaxspeech.ast import family as ast_family

  def loss(model, batch, key, step, cfg):
    del key, step, cfg
    logits_BxC = model(batch["fbank"])
    ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["label"])
    return ce_B.mean(), {"accuracy": (jnp.argmax(logits_BxC, -1) == batch["label"]).mean()}

  def batch_axes(cfg):
    del cfg
    return {"fbank": ("activation_batch", None, None), "label": ("activation_batch",)}

  return dataclasses.replace(ast_family.FAMILY, loss=loss, batch_axes=batch_axes)


def inputs(seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(BATCH, FRAMES, MEL)).astype(np.float32),
          rng.integers(0, CLASSES, size=(BATCH,)).astype(np.int32))


class JaxSide:
  """The library's compiled train step, a jitted forward (the loss alone) and the step's optimizer part alone, on
  a 1-device mesh. `variant` names a candidate change (see VARIANTS) active while tracing and compiling; `like`
  is a side whose initial state is copied when the param trees match (skips compiling the init)."""

  def __init__(self, stride: int, variant: str = "library", heads: int = SHAPE["heads"], with_optimizer: bool = True,
               like: "JaxSide | None" = None):
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding
    from jaxspeech import sharding
    from jaxspeech.train import optim, state as state_lib, step as step_lib

    self.cfg = cfg = jax_config(stride, heads)
    cfg.model.update(VARIANT_MODEL.get(variant, {}))
    with VARIANTS[variant]():
      fam = fbank_family()
      self.mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
      with sharding.use_rules(self.mesh, [tuple(r) for r in cfg.axis_rules]):
        graphdef, abstract_params, _ = state_lib.abstract_model(fam, cfg)
        tx, schedules = optim.make(cfg.optim, cfg.train.steps, abstract_params, fam.param_groups)
        target, shardings = state_lib.abstract_state(fam, cfg, tx, self.mesh)
        if like is not None and jax.tree.structure(like.state) == jax.tree.structure(target) and all(
            a.shape == b.shape for a, b in zip(jax.tree.leaves(like.state), jax.tree.leaves(target))):
          self.state = jax.tree.map(jnp.copy, like.state)
        else:
          self.state, shardings = state_lib.create(fam, cfg, tx, self.mesh)
        batch_shardings = {k: NamedSharding(self.mesh, sharding.logical_spec(a))
                           for k, a in fam.batch_axes(cfg).items()}
        make = STEP_VARIANTS.get(variant, step_lib.make_train_step)
        step = make(fam, cfg, graphdef, tx, schedules, shardings, batch_shardings)
        fbank, label = inputs()
        self.batch = {k: jax.device_put(v, batch_shardings[k]) for k, v in (("fbank", fbank), ("label", label))}
        forward = jax.jit(lambda params, rest, batch: fam.loss(nnx.merge(graphdef, params, rest), batch, None, 0, cfg)[0])
        self.forward = forward.lower(self.state.params, self.state.rest, self.batch).compile()
        t0 = time.perf_counter()
        self.step = step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        if with_optimizer:
          grads = jax.jit(jax.grad(lambda p: fam.loss(nnx.merge(graphdef, p, self.state.rest), self.batch, None, 0,
                                                      cfg)[0]))(self.state.params)
          self.grads, self.loss_value = grads, self.forward(self.state.params, self.state.rest, self.batch)
          self.optimizer = jax.jit(optimizer_part(tx), donate_argnums=0).lower(
              self.state, self.grads, self.loss_value).compile()

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

  def optimizer_step(self) -> float:
    import jax
    t0 = time.perf_counter()
    self.state, grad_norm = self.optimizer(self.state, self.grads, self.loss_value)
    jax.block_until_ready(grad_norm)
    return time.perf_counter() - t0

  def loss(self) -> float:
    return float(self.forward(self.state.params, self.state.rest, self.batch))


def optimizer_part(tx):
  """What `make_train_step` does after the gradients: global norm, non-finite guard, clip → AdamW (in a cond)."""
  import jax
  import jax.numpy as jnp
  import optax

  def run(state, grads, loss):
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    params, opt_state = jax.lax.cond(finite, update, lambda _: (state.params, state.opt_state), None)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), grad_norm

  return run


# --------------------------------------------------------------------------------------------------- torch side

class TorchSide:
  """`ASTForAudioClassification` in train mode (dropout 0), CrossEntropyLoss, clip_grad_norm_ and AdamW."""

  def __init__(self, stride: int, heads: int = SHAPE["heads"]):
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
    # The weight-decay groups of `optim.decay_mask`: kernels, tokens and position embeddings; no biases or norms.
    decay = [p for p in self.model.parameters() if p.ndim > 1]
    no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                 lr=LR, betas=(0.9, 0.999), eps=1e-8)
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

  def optimizer_step(self) -> float:
    """Clip and AdamW on the gradients the last train step left in `.grad`."""
    import torch
    t0 = time.perf_counter()
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


def _patch_all_tokens_to_the_end():
  """AST.__call__ as HF computes it: every token through the last block, then the cls/dist rows are pooled."""
  import jax.numpy as jnp
  from jaxspeech.ast.model import AST

  def call(self, fbank_BxTxF):
    h_BxLxD = self.features(fbank_BxTxF)
    return self.head(self.head_norm((h_BxLxD[:, 0] + h_BxLxD[:, 1]) / 2)).astype(jnp.float32)

  return _patched(AST, "__call__", call)


def _select_step(family, cfg, graphdef, tx, schedules, state_shardings, batch_shardings):
  """make_train_step with the non-finite guard as a select on the new state instead of lax.cond."""
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  def loss_fn(params, rest, batch, key):
    return family.loss(nnx.merge(graphdef, params, rest), batch, key, 0, cfg)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = grad_fn(state.params, state.rest, batch, key)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}
    return state.replace(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state)), metrics

  return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=0)


VARIANTS = {  # name → context manager factory active while the model is traced and compiled
    "library": _no_patch,
    "whole-batch attention": _no_patch,
    "every token through the last block": lambda: _patch_all_tokens_to_the_end()(),
    "both (the library before 2026-11-27)": lambda: _patch_all_tokens_to_the_end()(),
    "select guard": _no_patch,
}
VARIANT_MODEL = {  # name → cfg.model overrides
    "whole-batch attention": {"attention_block_kib": 0},
    "both (the library before 2026-11-27)": {"attention_block_kib": 0},
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


class Usage:
  """Minor page faults and kernel CPU time of this process, summed over timed blocks (per side)."""

  def __init__(self):
    self.faults, self.system_s, self.calls = 0, 0.0, 0

  def add(self, before, after, calls: int) -> None:
    self.faults += after.ru_minflt - before.ru_minflt
    self.system_s += after.ru_stime - before.ru_stime
    self.calls += calls


def paired(sides: dict, what: str, rounds: int, max_other: float, retries: int, usage: dict | None = None):
  """({name: call times}, largest share of the CPU other processes used during a kept round). A round calls
  every side once in turn, so the i-th times of two sides are a pair whose ratio the machine's slow drifts
  cancel out of; a round during which other processes used more than `max_other` of the CPU is run again (up to
  `retries` times) after a quiet half-second. `usage` collects each side's page faults and kernel time."""
  import resource
  times, worst = {name: [] for name in sides}, 0.0
  for _ in range(rounds):
    for attempt in range(retries + 1):
      if attempt:
        wait_quiet(max_other / 2, 20.0)
      share, got, use = CpuShare(), {}, {}
      for name, side in sides.items():
        before = resource.getrusage(resource.RUSAGE_SELF)
        got[name] = getattr(side, what)()
        use[name] = (before, resource.getrusage(resource.RUSAGE_SELF))
      other = share.other() or 0.0
      if other <= max_other or attempt == retries:
        break
    worst = max(worst, other)
    for name in sides:
      times[name].append(got[name])
      if usage is not None:
        usage.setdefault(name, Usage()).add(*use[name], 1)
  return times, worst


def ratios(times: dict, num: str, den: str) -> list[float]:
  return [a / b for a, b in zip(times[num], times[den])]


def quartiles(xs: list[float]) -> tuple[float, float, float]:
  q1, q2, q3 = statistics.quantiles(xs, n=4)
  return q1, q2, q3


def median_ms(ts: list[float]) -> float:
  return 1e3 * statistics.median(ts)


FLAG_SETS = {  # name → XLA_FLAGS for a child process (XLA reads them once per process)
    "default flags": "",
    "XLA's own dots instead of YNNPACK's": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
    "no YNNPACK": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot,-individual_convolution,-reduce",
    "oneDNN matmuls (as torch)": "--xla_cpu_use_onednn=true",
    "memory-optimized scheduler": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "concurrency-optimized scheduler": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "FAST_RUNTIME preset": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME",
}


def tokens(stride: int) -> int:
  return ((MEL - 16) // stride + 1) * ((FRAMES - 16) // stride + 1) + 2


def compare_main(stride: int, args) -> dict:
  """jaxspeech vs torch at one stride: train step, forward and optimizer medians, faults and kernel time."""
  jax_side, torch_side = JaxSide(stride, "library", heads=args.heads), TorchSide(stride, heads=args.heads)
  sides = {"jaxspeech": jax_side, "torch": torch_side}
  for side in sides.values():
    for _ in range(2):
      side.train_step()
      side.forward_step()
      side.optimizer_step()
  out = {"other": 0.0, "compile_s": jax_side.compile_s, "temp_mb": jax_side.step.memory_analysis().temp_size_in_bytes / 1e6,
         "torch_threads": torch_side.threads, "torch_attention": torch_side.attn, "rows": {}}
  usage = {}
  for what, rounds in (("train_step", args.rounds), ("forward_step", args.other_rounds),
                       ("optimizer_step", args.other_rounds)):
    times, other = paired(sides, what, rounds, args.max_other, args.retries,
                          usage=usage if what == "train_step" else None)
    out["other"] = max(out["other"], other)
    for name, ts in times.items():
      row = out["rows"].setdefault(name, {})
      row[what], row[what + "_n"] = median_ms(ts), len(ts)
    if what == "train_step":
      out["ratio"] = quartiles(ratios(times, "torch", "jaxspeech"))
  for name, u in usage.items():
    out["rows"][name].update(faults=u.faults / u.calls, system_ms=1e3 * u.system_s / u.calls)
  out["jax_side"] = jax_side
  return out


def child(args) -> None:
  """`--child`: prints JSON figures measured in this process (its own XLA_FLAGS / GLIBC_TUNABLES)."""
  if args.child == "main":
    out = compare_main(args.strides[0], args)
    out.pop("jax_side")
    print(json.dumps(out))
    return
  sides = {"jax": JaxSide(args.probe_stride, "library", heads=args.heads, with_optimizer=False)}
  train, fwd, other = compare(sides, args, args.flag_steps)
  print(json.dumps({"train": train["jax"], "forward": fwd["jax"], "other": other}))


def run_child(kind: str, env: dict, args, *extra: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--heads", str(args.heads), "--rounds", str(args.rounds), "--other-rounds", str(args.other_rounds), "--flag-steps",
         str(args.flag_steps), "--probe-stride", str(args.probe_stride), "--max-other", str(args.max_other),
         "--retries", str(args.retries), *extra]
  env = {k: v for k, v in dict(os.environ, **env).items() if v is not None}
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main_rows(stride: int, figures: dict, label: str = "") -> list[dict]:
  rows = []
  for name, f in figures["rows"].items():
    rows.append({"case": f"16×16 stride {stride}/{stride} ({tokens(stride)} tokens)" if not rows else "",
                 "side": name + label if name == "jaxspeech" else name, "step": f["train_step"],
                 "fwd": f["forward_step"], "opt": f["optimizer_step"], "faults": f["faults"],
                 "system_ms": f["system_ms"], "n": f["train_step_n"], "n_other": f["forward_step_n"]})
  rows[-1]["ratio"] = figures["ratio"]
  return rows


def main_table(rows: list[dict]) -> str:
  out = ["| patches | side | step ms | samples/s | forward ms | backward ms | backward / forward | clip+AdamW ms "
         "| page faults / step | kernel CPU ms / step | jax/torch samples/s (quartiles) |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    backward = r["step"] - r["fwd"] - r["opt"]
    ratio = f"**{r['ratio'][1]:.2f}×** ({r['ratio'][0]:.2f}–{r['ratio'][2]:.2f})" if "ratio" in r else ""
    out.append(f"| {r['case']} | {r['side']} | {r['step']:.1f} | {BATCH / r['step'] * 1e3:.1f} | {r['fwd']:.1f} | "
               f"{backward:.1f} | {backward / r['fwd']:.2f} | {r['opt']:.1f} | {r['faults']:,.0f} | "
               f"{r['system_ms']:.0f} | {ratio} |")
  return "\n".join(out) + "\n"


def variant_table(rows: list[dict], title: str) -> str:
  temp = any("temp_mb" in r for r in rows)
  out = [f"| {title} | step ms | vs library | forward ms | vs library |" + (" XLA temp MB |" if temp else ""),
         "|---|---:|---:|---:|---:|" + ("---:|" if temp else "")]
  for r in rows:
    out.append(f"| {r['name']} | {r['step']:.1f} | {r['step'] / r['base_step'] - 1:+.1%} | {r['fwd']:.1f} | "
               f"{r['fwd'] / r['base_fwd'] - 1:+.1%} |" + (f" {r['temp_mb']:.0f} |" if temp else ""))
  return "\n".join(out) + "\n"


def paired_table(rows: list[dict], base_ms: float) -> str:
  out = ["| variant | step time / library's (median, quartiles) | ≈ step ms | forward time / library's | XLA temp MB |",
         "|---|---:|---:|---:|---:|"]
  for r in rows:
    q1, q2, q3 = r["step"]
    out.append(f"| {r['name']} | {q2:.3f} ({q1:.3f}–{q3:.3f}) | {q2 * base_ms:.1f} | {r['fwd']:.3f} | "
               f"{r['temp_mb']:.0f} |")
  return "\n".join(out) + "\n"


def compare(sides: dict, args, steps: int) -> tuple[dict, dict, float]:
  for side in sides.values():
    side.train_step()
    side.forward_step()
  train, other_t = paired(sides, "train_step", steps, args.max_other, args.retries)
  fwd, other_f = paired(sides, "forward_step", steps, args.max_other, args.retries)
  return ({k: median_ms(v) for k, v in train.items()}, {k: median_ms(v) for k, v in fwd.items()},
          max(other_t, other_f))


def run(args) -> dict:
  result = {"main": [], "malloc": [], "variants": [], "flags": [], "other": 0.0, "compile": {}, "temp": {}, "ratio": {}}
  library = None
  for stride in args.strides:
    figures = compare_main(stride, args)
    result.update(torch_threads=figures["torch_threads"], torch_attention=figures["torch_attention"])
    result["other"] = max(result["other"], figures["other"])
    result["compile"][stride], result["temp"][stride] = figures["compile_s"], figures["temp_mb"]
    result["main"] += main_rows(stride, figures)
    result["ratio"][stride] = figures["ratio"][1]
    print(main_table(result["main"]), file=sys.stderr, flush=True)
    if stride == args.probe_stride:
      library = figures["jax_side"]
    del figures

  if args.malloc:
    figures = run_child("main", {"GLIBC_TUNABLES": None, "JAXSPEECH_MALLOC_TUNING": "0"}, args, "--strides", "16")
    result["other"] = max(result["other"], figures["other"])
    result["malloc"] = main_rows(16, figures, " (default glibc malloc)")
    print(main_table(result["malloc"]), file=sys.stderr, flush=True)

  if args.variants:
    library = library or JaxSide(args.probe_stride, "library", heads=args.heads, with_optimizer=False)
    sides = {"library": library}
    for name in VARIANTS:
      if name != "library":
        sides[name] = JaxSide(args.probe_stride, name, heads=args.heads, with_optimizer=False, like=library)
    for side in sides.values():
      side.train_step()
      side.forward_step()
    train, other_t = paired(sides, "train_step", args.variant_rounds, args.max_other, args.retries)
    fwd, other_f = paired(sides, "forward_step", args.variant_rounds, args.max_other, args.retries)
    result["other"] = max(result["other"], other_t, other_f)
    result["variant_base_ms"] = median_ms(train["library"])
    result["variants"] = [{"name": name, "step": quartiles(ratios(train, name, "library")),
                           "fwd": statistics.median(ratios(fwd, name, "library")),
                           "temp_mb": side.step.memory_analysis().temp_size_in_bytes / 1e6}
                          for name, side in sides.items() if name != "library"]
    result["variants"].insert(0, {"name": "library", "step": (1.0, 1.0, 1.0), "fwd": 1.0,
                                  "temp_mb": library.step.memory_analysis().temp_size_in_bytes / 1e6})
    del sides
    print(paired_table(result["variants"], result["variant_base_ms"]), file=sys.stderr, flush=True)

  if args.flags:
    flags = {name: run_child("flags", {"XLA_FLAGS": value}, args) for name, value in FLAG_SETS.items()}
    result["other"] = max([result["other"]] + [f["other"] for f in flags.values()])
    base = flags["default flags"]
    result["flags"] = [{"name": f"{name} (`{FLAG_SETS[name]}`)" if FLAG_SETS[name] else name,
                        "step": f["train"], "fwd": f["forward"], "base_step": base["train"],
                        "base_fwd": base["forward"]} for name, f in flags.items()]
    print(variant_table(result["flags"], "XLA_FLAGS"), file=sys.stderr, flush=True)
  return result


VARIANT_NOTES = {
    "library": "`make_train_step` as is (the same executable as the table above)",
    "whole-batch attention": "`model.attention_block_kib=0`: one attention over the whole batch instead of blocks "
                             "of rows with ≤ 1 MiB of logits each",
    "every token through the last block": "AST.__call__ as HF's: the last block computes every token, and the head "
                                          "pools the cls and distillation rows afterwards",
    "both (the library before 2026-11-27)": "the two rows above together",
    "select guard": "the non-finite guard as `jnp.where` on the new params and optimizer state instead of `lax.cond`",
}


def section(result: dict, args, load: float, seconds: float, command: str) -> str:
  today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()  # = `date -u +%F`
  first = result["main"][0]
  compile_s = ", ".join(f"{v:.1f} s at stride {k}" for k, v in result["compile"].items())
  temp = ", ".join(f"{v:.0f} MB at stride {k}" for k, v in result["temp"].items())
  text = f"""## {SECTION}

Written by `{command}` ({seconds:.0f} s).

- Date: {today} (UTC)
- Machine: {common.machine()}; load average {load:.2f} before the run; other processes used at most
  {100 * result['other']:.0f} % of the CPU during a kept timing round
- Software: {common.versions(VERSIONS)}
- Model: AST hidden {SHAPE['hidden']}, {SHAPE['layers']} layers, {args.heads} heads, MLP {SHAPE['mlp']}, {CLASSES} classes, float32, on
  a precomputed fbank of {BATCH}×{FRAMES}×{MEL} (batch × frames × mel bins) fed to both sides, integer labels, mean
  cross-entropy; AdamW lr {LR:g}, β (0.9, 0.999), eps 1e-8, weight decay 0.01 on params with ndim > 1 (kernels,
  tokens, position embeddings), global-norm clip {CLIP:g}
- jaxspeech: the trainer's step from `jaxspeech.train.step.make_train_step` (donated state, `lax.cond` non-finite
  guard, `optim.make`'s clip → AdamW) over the AST model of `configs/ast.py:tiny` at these shapes (attention in
  blocks of ≤ {jax_config(10).model.attention_block_kib} KiB of logits; the last block computes only the cls and
  distillation tokens the head reads) with a loss that reads `batch["fbank"]`, on a 1-device
  mesh (no fake host devices); compile {compile_s}; XLA temp buffer {temp}
- torch: `ASTForAudioClassification` in train mode with dropout 0 (attention `{result['torch_attention']}`),
  `CrossEntropyLoss`, `clip_grad_norm_`, `torch.optim.AdamW` (default implementation);
  `torch.get_num_threads()` = {result['torch_threads']}

{main_table(result['main'])}
- {first['n']} rounds of one train step per side (jaxspeech, torch, jaxspeech, ...) and {first['n_other']} of forward and
  optimizer calls, after warm-up (compilation); times are medians, samples/s = {BATCH} / step time, and
  jax/torch samples/s is the median of the rounds' torch/jaxspeech step-time ratios (the machine's slow drifts
  cancel within a round), with its quartiles.
- forward: the loss alone (jitted; under `torch.no_grad()`). clip+AdamW: global norm, clipping and the AdamW update
  alone on fixed gradients (for jaxspeech with the non-finite guard, as in the step). backward = step − forward −
  clip+AdamW: the gradient computation including the forward's extra work for it (saved residuals).
- page faults and kernel CPU time are this process's (`getrusage`) during each side's train steps.
"""
  if result["malloc"]:
    text += f"""
The same comparison at stride 16/16 in a process with glibc's default malloc (`JAXSPEECH_MALLOC_TUNING=0`): XLA
allocates the step's temp buffer with malloc on a worker thread on every call; glibc serves a chunk that large
with a fresh `mmap` and `munmap`s it on free, so every step page-faults the whole buffer in again. This is why
`jaxspeech train|eval` (and this benchmark) re-execute under `GLIBC_TUNABLES={host.MALLOC_TUNABLES}`
(`jaxspeech/train/host.py`): one arena, no mmap, no trimming, so the heap keeps the buffer.

{main_table(result['malloc'])}"""
  if result["variants"]:
    text += f"""
The library's choices and candidate changes at stride {args.probe_stride}/{args.probe_stride}, each set up here (a `cfg.model` override or
a patch active while the step is traced; the library is untouched): {args.variant_rounds} rounds, each calling the library step and then every variant once, give each
variant {args.variant_rounds} ratios to the library step of the same round (the machine's slow drifts cancel);
the library's median step here was {result['variant_base_ms']:.1f} ms.

{paired_table(result['variants'], result['variant_base_ms'])}
""" + "\n".join(f"- {name}: {note}" for name, note in VARIANT_NOTES.items()) + "\n" + like_for_like(result, args)
  if result["flags"]:
    text += f"""
XLA CPU flags, each in its own process running the library step at stride {args.probe_stride}/{args.probe_stride}
({args.flag_steps} train steps and forwards; separate processes at different times, so not paired: differences within
about ±5 % are noise):

{variant_table(result['flags'], 'XLA_FLAGS')}"""
  return text + NOTES


def like_for_like(result: dict, args) -> str:
  """The jax/torch ratio at the probe stride with the library's two choices off (the "both" row)."""
  both = next((r["step"][1] for r in result["variants"] if r["name"].startswith("both")), None)
  main = result["ratio"].get(args.probe_stride)
  if both is None or main is None:
    return ""
  return (f"\nLike for like (both choices off: every token through every block and whole-batch attention, as "
          f"transformers computes), jaxspeech's step is {main / both:.2f}× torch's speed at stride "
          f"{args.probe_stride}/{args.probe_stride} (the main table's ratio divided by the \"both\" row's).\n")


NOTES = """
Notes:
- The machine is shared. A round during which other processes used more than 10 % of the CPU is run again
  (up to 3 times) after a quiet half-second. PyTorch's OpenMP threads suffer far more than XLA's from load on 2 cores
  (torch steps of 0.7–4 s instead of 0.16 s were seen while another process took one core; jaxspeech steps about
  doubled), so a ratio taken under load favours jaxspeech. Slowdowns from outside this VM are not visible here;
  repeated runs differed by up to about 10 % per figure (the torch side most) even when nothing else ran in the
  VM; the ratios, paired within rounds, are steadier, and their quartiles show the spread.
- Where the time goes (a `jax.profiler` trace of the step, per XLA thunk, at stride 10 before the two choices):
  dots are about 80 % of the busy time; the attention was a quarter of the step, and over the whole batch (logits
  8×4×302×302) it took 31 ms per layer forward and backward against 22 ms for torch's SDPA. In blocks of one batch
  row it took 22–25 ms: the win is cache locality, not fewer FLOPs. The matmuls themselves run at the same
  140–180 GFLOP/s on both sides. XLA computes the MLP's weight gradients (contracting the 2,416 batch × token
  rows) as an Eigen dot on a transposed copy; forcing plain row-major dots with materialised transposes (a
  custom VJP behind `optimization_barrier`) made the step 7 % slower, so it is not done.
"""




def dump_hlo(args) -> None:
  """`jax.jit(...).lower(...).compile().as_text()` of the library step and forward, one file per stride."""
  os.makedirs(args.dump_hlo, exist_ok=True)
  for stride in args.strides:
    side = JaxSide(stride, "library", heads=args.heads, with_optimizer=False)
    for name, compiled in (("train_step", side.step), ("forward", side.forward)):
      path = os.path.join(args.dump_hlo, f"ast_{name}_stride{stride}.hlo.txt")
      with open(path, "w") as f:
        f.write(compiled.as_text())
      print(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--strides", type=int, nargs="+", default=[16, 10])
  parser.add_argument("--heads", type=int, default=SHAPE["heads"])
  parser.add_argument("--rounds", type=int, default=21, help="paired train-step rounds in the main table")
  parser.add_argument("--other-rounds", type=int, default=12, help="paired forward / optimizer rounds")
  parser.add_argument("--flag-steps", type=int, default=9, help="train steps and forwards timed per flag set")
  parser.add_argument("--variant-rounds", type=int, default=20, help="paired rounds for the variants")
  parser.add_argument("--no-variants", dest="variants", action="store_false", help="skip the candidate changes")
  parser.add_argument("--flags", action="store_true", help="also time XLA CPU flags (one process each)")
  parser.add_argument("--probe-stride", type=int, default=16, choices=(16, 10), help="patch stride the flags run at")
  parser.add_argument("--no-malloc", dest="malloc", action="store_false",
                      help="skip the stride-16 comparison rerun in a process with glibc's default malloc")
  parser.add_argument("--max-other", type=float, default=0.1)
  parser.add_argument("--retries", type=int, default=3)
  parser.add_argument("--write", action="store_true", help=f"replace the section in {os.path.relpath(RESULTS)}")
  parser.add_argument("--dump-hlo", metavar="DIR", help="write the optimised HLO of the step and forward, then exit")
  parser.add_argument("--child", choices=("main", "flags"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if not os.environ.get("JAXSPEECH_MALLOC_TUNING") == "0":
    host.reexec_with_malloc_tuning([os.path.abspath(__file__), *sys.argv[1:]])  # as `jaxspeech train` runs
  if args.child:
    child(args)
    return
  if args.dump_hlo:
    dump_hlo(args)
    return
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  result = run(args)
  command = "benchmarks/ast_train.py " + " ".join(a for a in sys.argv[1:])
  text = section(result, args, load, time.perf_counter() - t0, command.strip())
  print(text)
  if args.write:
    common.write_section(SECTION, text)
    print(f"wrote the section {SECTION!r} of {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
  main()
