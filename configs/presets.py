"""Sharding presets: the Llasa LM (1B, 3B, 8B), the F5 DiT base, the X-codec2 base and Parakeet-CTC 0.6B (the asr
family) on typical TPU and GPU topologies.

  jaxspeech train --config=configs/presets.py:llasa_8b_v5p64 --workdir=gs://BUCKET/llasa_8b \
      --config.data.path=/gcs/BUCKET/codes/1.0.0 --config.llasa.tokenizer=gs://BUCKET/spm.model
  jaxspeech plan  --config=configs/presets.py:llasa_8b_v5p64 --topology v5p-128      (the TPU compiler, no TPU)

A preset is the family config (configs/llasa.py:<size>, configs/dit.py:base) with the mesh, the remat policy,
scanned layers and the per-device batch set for one topology; launch it with launch/tpu_vm.py, launch/xpk.py or
launch/slurm.py (docs/scale.md). Every preset keeps the recipe's global batch (Llasa: 256 rows of 2,048 tokens),
reached with gradient accumulation where a chip cannot hold its share at once.

Why these layouts: at these sizes the whole state (fp32 params, AdamW moments, gradients) sharded over every chip
(FSDP, `embed → fsdp`) is a few GiB per chip, so pure FSDP inside a slice is both simplest and fastest; tensor
parallelism (`mesh.tensor`) only pays once a layer's matmuls are too small per chip, which none of these are.
Across GPU nodes (slow links) the data axis goes outside and FSDP stays on NVLink. Sequence parallelism
(`mesh.sequence`, `activation_length → sequence`) is not needed at 2,048 tokens or 30 s of mel; set it for
longer rows. Remat: `save_dots` where memory allows (recomputes only elementwise work), `full` otherwise.

Memory per chip is the TPU compiler's, not a formula: `jaxspeech plan --topology` (docs/scale.md) compiles the
preset's real step for the topology on any host, and `benchmarks/tpu_aot.py` tables every preset on v5p-8,
v5p-64, v5e-16 and v6e-16 (benchmarks/RESULTS.md); a dash is a preset not compiled there yet. GPU presets are
planned with `jaxspeech plan --mesh ... --device h100` (CPU compiler) or measured by benchmarks/gpu.py. MFU
targets are what comparable MaxText runs publish (its README's tables: Llama2-7B at 492 TFLOP/s per H100
≈ 50 %; 65 % on v5p; 45 % on v6e-256); they are targets, not measurements of these presets. Llasa
presets compute the cross-entropy 256 positions at a time (`llasa.loss_chunk`): on v5p the same estimated step
time as the whole row with 12.5 GiB of temporaries instead of 23.

| preset | chips | mesh | rows per chip × accumulation | remat | peak per chip | MFU target |
| --- | --- | --- | --- | --- | --- | --- |
| llasa_1b_v5p64 | v5p-64 (64 chips, 95 GiB) | fsdp 64 | 4 × 1 | save_dots | 16.3 GiB (TPU compiler, v5p-8, est. MFU 64 %; laid on v5p-8 with accumulation 16: 19.1 GiB, 66 %) | 55-65 % |
| llasa_3b_v5p64 | v5p-64 | fsdp 64 | 4 × 1 | full | - | 55-65 % |
| llasa_8b_v5p64 | v5p-64 | fsdp 64 | 4 × 1 | full | - | 55-65 % |
| llasa_1b_v5e256 | v5e-256 (16 GiB) | fsdp 256 | 1 × 1 | full | - | 45-55 % |
| llasa_3b_v5e256 | v5e-256 | fsdp 256 | 1 × 1 | full | - | 45-55 % |
| llasa_8b_v6e256 | v6e-256 (32 GiB) | fsdp 256 | 1 × 1 | full | - | 40-50 % |
| llasa_1b_h100x8 | 8×H100 (80 GiB) | fsdp 8 | 4 × 8 | save_dots | 19 GiB (XLA, accumulation 16: 19.7 GiB) | 40-50 % |
| llasa_3b_h100x8 | 8×H100 | fsdp 8 | 2 × 16 | full | 14 GiB (formula) | 40-50 % |
| llasa_8b_h100x64 | 8 nodes × 8 H100 | data 8 (across nodes) × fsdp 8 | 4 × 1 | full | 30 GiB (formula) | 40-50 % |
| dit_base_v5p64 | v5p-64 | data 64 | 38,400 mel frames × 1 | none | 35.9 GiB (TPU compiler, v5p-8, est. MFU 73 %) | 45-55 % |
| dit_base_h100x8 | 8×H100 | data 8 | 9,600 mel frames × 4 | none | see below | 40-50 % |
| codec_base_v5p64 | v5p-64 | data 64 | 1 crop (1 s) × 1, acoustic-only | none | 7.3 GiB (TPU compiler, laid on v5p-8 with accumulation 16: est. MFU 1.8 %) | 45 % |
| codec_base_v5p8 | v5p-8 (4 chips) | data 4 | 16 crops (1 s) × 1, acoustic-only | none | 13.3 GiB (TPU compiler, est. MFU 7.8 %) | 45 % |
| asr_0.6b_v5p64 | v5p-64 | data 64 | 20,000 frames (200 s) × 1, bf16 | none | - | 45-55 % |

DiT base (336M params) is data-parallel: its state is 5 GiB per chip unsharded. On TPU its attention runs the
splash kernel; elsewhere it is materialised (B×H×L×L scores in float32). Its blocks are not rematerialised. A v5p
chip holds F5's 38,400 frames per chip per update at once: per microbatch each chip casts and reads every weight
and accumulates every gradient, so 4 microbatches of 9,600 frames cost the TPU compiler's estimate 31% more time
per frame than one of 38,400 (RESULTS.md, "DiT base on v5p-8"). An H100 keeps 9,600 frames × 4 until measured.
"""

import importlib.util
import os


def _family_config(name: str):
  """configs/<name>.py, loaded by path as config_flags loads this file (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(os.path.dirname(__file__), f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


LLASA_ROWS = 256  # Llasa's global batch of 2,048-token rows

# name: (size, mesh, rows per chip per microbatch, accumulation steps, remat)
LLASA = {
    "llasa_1b_v5p64": ("1b", dict(fsdp=64), 4, 1, "save_dots"),
    "llasa_3b_v5p64": ("3b", dict(fsdp=64), 4, 1, "full"),
    "llasa_8b_v5p64": ("8b", dict(fsdp=64), 4, 1, "full"),
    "llasa_1b_v5e256": ("1b", dict(fsdp=256), 1, 1, "full"),
    "llasa_3b_v5e256": ("3b", dict(fsdp=256), 1, 1, "full"),
    "llasa_8b_v6e256": ("8b", dict(fsdp=256), 1, 1, "full"),
    "llasa_1b_h100x8": ("1b", dict(fsdp=8), 4, 8, "save_dots"),
    "llasa_3b_h100x8": ("3b", dict(fsdp=8), 2, 16, "full"),
    "llasa_8b_h100x64": ("8b", dict(data=8, fsdp=8), 4, 1, "full"),
}
# name: (mesh, mel frames per chip per microbatch, accumulation steps)
DIT = {
    "dit_base_v5p64": (dict(data=64), 38_400, 1),
    "dit_base_h100x8": (dict(data=8), 9_600, 4),
}
# name: (mesh, crops per chip per microbatch, accumulation steps); X-codec2's 64 one-second crops per update,
# acoustic-only (configs/codec.py:base without its semantic branch)
CODEC = {
    "codec_base_v5p64": (dict(data=64), 1, 1),
    # the same update on 4 chips: a microbatch of one crop per chip moves every weight for one second of audio
    # (benchmarks/RESULTS.md, "The codec step compiles on a 24 GiB host")
    "codec_base_v5p8": (dict(data=4), 16, 1),
}
# name: (mesh, 10 ms frames per chip per microbatch, accumulation steps); Parakeet-CTC 0.6B, data parallel
ASR = {
    "asr_0.6b_v5p64": (dict(data=64), 20_000, 1),
}
VARIANTS = tuple(LLASA) + tuple(DIT) + tuple(CODEC) + tuple(ASR)


def _mesh(cfg, sizes: dict) -> None:
  cfg.mesh.update(data=1, fsdp=1, tensor=1, sequence=1)
  cfg.mesh.update(**sizes)


def chips(sizes: dict) -> int:
  n = 1
  for v in sizes.values():
    n *= v
  return n


def mesh_of(variant: str) -> dict:
  return LLASA[variant][1] if variant in LLASA else {**DIT, **CODEC, **ASR}[variant][0]


def per_chip(variant: str) -> int:
  """Rows (Llasa: 2,048-token rows; codec: crops) or frames (DiT: mel; ASR: 10 ms) per chip per microbatch."""
  return LLASA[variant][2] if variant in LLASA else {**DIT, **CODEC, **ASR}[variant][1]


def get_config(variant: str):
  if variant in LLASA:
    size, mesh, rows, accum, remat = LLASA[variant]
    cfg = _family_config("llasa").get_config(size)
    _mesh(cfg, mesh)
    if rows * accum * chips(mesh) != LLASA_ROWS:
      raise AssertionError(f"{variant}: {rows} rows × {accum} × {chips(mesh)} chips is not {LLASA_ROWS}")
    cfg.model.update(scan_layers=True, remat=remat)
    cfg.llasa.loss_chunk = 256  # no (rows, 2048, 193,800) logits at once: 12.5 GiB temp on v5p, not 23 (RESULTS.md)
    cfg.train.batch_size = LLASA_ROWS
    cfg.optim.accum_steps = accum
    return cfg
  if variant in DIT or variant in ASR:  # frame-budget batches
    family, size = ("dit", "base") if variant in DIT else ("asr", "parakeet_ctc_0.6b")
    mesh, frames, accum = {**DIT, **ASR}[variant]
    cfg = _family_config(family).get_config(size)
    _mesh(cfg, mesh)
    cfg.data.frame_budget = frames * accum * chips(mesh)
    cfg.optim.accum_steps = accum
    return cfg
  if variant in CODEC:
    mesh, crops, accum = CODEC[variant]
    cfg = _family_config("codec").get_config("base")
    cfg.model.semantic.enabled = False  # acoustic-only: the semantic branch needs its w2v-BERT teacher's weights
    _mesh(cfg, mesh)
    if crops * accum * chips(mesh) != cfg.train.batch_size:
      raise AssertionError(f"{variant}: {crops} crops × {accum} × {chips(mesh)} chips is not {cfg.train.batch_size}")
    cfg.optim.accum_steps = accum
    return cfg
  raise ValueError(f"unknown variant {variant!r} of configs/presets.py; choose one of {', '.join(VARIANTS)}")
