"""Each family's tiny config cut to TPU-test shapes, and the check every TPU compile of a train step must pass.

The compile must fit, and the compiler's FLOPs must agree with the family's analytic `train_flops`: the compiler
counts every op (norms, softmax, the optimizer) but prices Pallas kernels (splash attention) by bytes alone, so
the ratio compiler / analytic is allowed [0.75, 1.5] at these tiny shapes (AST and the codec: see below).
"""

from jaxspeech.train import plan as plan_lib, pod, topology
from tests.helpers import load_config

FLOPS_RATIO = (0.75, 1.5)
# AST at these shapes: the Kaldi fbank's FFTs and filterbank, which the compiler counts and `train_flops` does
# not, outweigh its 64-wide matmuls (3.3× measured); a loop counted once would still fall below 1.
FLOPS_RATIO_AST = (1.0, 4.0)
# The codec: traced for TPU, its 36 anti-aliased activations resample by depthwise convolutions (the CPU's
# shifted sums took the TPU compiler twice as long), which the compiler counts at several times their
# multiply-adds (the tiny encoder's gradient: 2.85 → 4.65 GFLOP); `train_flops` counts the CPU form (1.99 measured).
FLOPS_RATIO_CODEC = (1.0, 2.5)
# This libtpu's cost model gives the whole codec step a negative time, though each of its parts (encoder,
# decoder backbone, ISTFT head, discriminators) alone gets a positive one: the report says n/a.
NO_TIME = {"codec"}


def config(family: str):
  if family == "ast":
    cfg = load_config("ast", "tiny")
    cfg.model.update(hidden=64, layers=2, heads=2, mlp=128, max_frames=128)
  elif family == "llasa":
    cfg = load_config("llasa", "tiny")
    cfg.llasa.update(num_speech_tokens=1024, seq_len=256)
    cfg.model.update(vocab_size=256 + 8 + 1024, layers=2)
  elif family == "dit":
    cfg = load_config("dit", "tiny")
    cfg.model.update(depth=2, conv_layers=1)
    cfg.data.update(bucket_seconds=(2, 4), frame_budget=8 * 375)  # 8 rows of the longest (4 s) bucket
  else:
    cfg = load_config("codec", "tiny")
    cfg.update_from_flattened_dict({"gan.periods": (2,), "gan.windows": (512,), "model.decoder.depth": 1})
  cfg.train.batch_size = 8
  return cfg


# Each family on its presets' layout: FSDP for the transformers, data parallel for the DiT and the codec.
LAYOUT = {"ast": "fsdp=4", "llasa": "fsdp=4", "dit": "data=4", "codec": "data=4"}


def cases(*families: str) -> list[tuple[str, str, int, str]]:
  """(family, topology, slices, mesh): each family on one v5e:2x2 slice and on two v5p:2x2x1 slices (dcn)."""
  return ([(f, "v5e:2x2", 1, LAYOUT[f]) for f in families]
          + [(f, "v5p:2x2x1", 2, f"{LAYOUT[f]},dcn_data=2") for f in families])


def check_train_step(family: str, name: str, slices: int, mesh: str):
  """Compiles `family`'s test config for `slices` × `name` on `mesh` (with its inference programs on one slice)."""
  cfg = config(family)
  target = topology.parse(name, slices)
  plan, _ = pod.measure(cfg, target, plan_lib.pod_mesh(cfg, mesh, target), inference=slices == 1)
  step = plan.train
  assert step.over == 0 and 0 < step.peak < 0.9 * target.hbm_gib * 2**30
  ratio = step.flops / (plan.train_flops / target.chips)
  low, high = {"ast": FLOPS_RATIO_AST, "codec": FLOPS_RATIO_CODEC}.get(family, FLOPS_RATIO)
  assert low <= ratio <= high, f"compiler / analytic FLOPs = {ratio:.2f}"
  assert step.loops == 0
  assert plan.roofline(step) > 0
  if slices == 1 and family not in NO_TIME:  # the cost model gives some multi-slice steps a negative time too
    assert step.seconds >= 0.5 * plan.roofline(step), (step.seconds, plan.roofline(step))
  if slices > 1:  # data parallel across the slices: the gradients are summed over the dcn axis
    assert step.collectives["all-reduce"] > 0
  assert "train step | yes" in pod.report(plan)
  expected = {"llasa": ["prefill", "decode step"], "dit": ["sampler step"]}.get(family, []) if slices == 1 else []
  assert [p.name for p in plan.programs[1:]] == expected
  for program in plan.programs[1:]:
    assert program.over == 0 and program.flops > 0 and program.seconds > 0
