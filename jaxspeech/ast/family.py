"""AST as a family: Kaldi fbanks computed on the device, then one of two objectives (`model.task`):

- "classify": speaker classification, optionally started from another run with `train.init_from` (an SSAST
  pretraining run, a classifier, or a converted HF / original checkpoint; `adapt_init` maps its params) and
  optionally parameter-efficient (`model.adapter`, see `jaxspeech.ast.adapters`: the base model is frozen through
  the optimizer group "frozen");
- "ssast": SSAST masked patch pretraining on unlabelled audio (labels are read but never used), with its
  masking and loss weights in `cfg.ssast`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxspeech.ast import adapters, masking, ssast
from jaxspeech.ast.model import AST, ASTConfig, PETLAST, last_block_tokens
from jaxspeech.audio import features
from jaxspeech.data import batching, pipeline, tfds_io
from jaxspeech.train import optim
from jaxspeech.train.family import Family

SAMPLE_RATE = 16_000
HOP = 160      # 10 ms frame shift at 16 kHz
WINDOW = 400   # 25 ms


TASKS = ("classify", "ssast")
# `cfg.model` fields that are the family's, not ASTConfig's.
FAMILY_FIELDS = ("task", "adapter")


def model_config(cfg) -> ASTConfig:
  return ASTConfig(**{k: v for k, v in cfg.model.to_dict().items() if k not in FAMILY_FIELDS})


def task(cfg) -> str:
  name = cfg.model.get("task", "classify")
  if name not in TASKS:
    raise ValueError(f"unknown model.task {name!r}; choose one of {TASKS}")
  return name


def petl_config(cfg) -> adapters.PETLConfig | None:
  return adapters.from_config(cfg.model.get("adapter"))


def build_model(cfg, rngs):
  """SSAST for pretraining, else an AST (a `PETLAST` with `model.adapter`); a run starts from another
  workdir's params with `train.init_from` (see `adapt_init`)."""
  petl = petl_config(cfg)
  if task(cfg) == "ssast":
    if petl is not None:
      raise ValueError("model.adapter is for fine-tuning (model.task='classify'), not SSAST pretraining")
    return ssast.SSAST(model_config(cfg), rngs)
  if petl is not None:
    model = PETLAST(model_config(cfg), petl, rngs)
    _report_trainable(petl.kind, *trainable_count(model))
    return model
  return AST(model_config(cfg), rngs)


def adapt_init(params: dict, source: dict, cfg) -> dict:
  """`train.init_from` params ({dotted path: array}) of a run with config.json `source`, in this model's paths.

  An SSAST pretraining run gives a classifier its encoder (heads and `mask_embed` left out); an AST classifier
  (trained here, or converted from HF or an original checkpoint) gives all its params. The positional
  embeddings are moved to this model's patch grid (SSAST's centre cut or interpolation, per axis), and a PETL
  model holds them under its method's name. A PETL run as the source is refused (start from its own source).
  """
  model = source["model"]
  if (model.get("adapter") or {}).get("kind"):
    raise ValueError(f"train.init_from is a PETL run ({model['adapter']['kind']}); start from the run it started from")
  if task(cfg) == "ssast":
    return params
  if model.get("task") == "ssast":
    params = {k.removeprefix("encoder."): v for k, v in params.items() if k.startswith("encoder.")}
  fields = {f.name for f in dataclasses.fields(ASTConfig)}
  source_cfg = ASTConfig(**{k: v for k, v in model.items() if k in fields})
  params = {**params, "pos_embed": ssast.resize_positions(np.asarray(params["pos_embed"]), source_cfg.grid(),
                                                          model_config(cfg).grid())}
  petl = petl_config(cfg)
  return params if petl is None else {f"{petl.kind}.{k}": v for k, v in params.items()}


def param_groups(path: tuple[str, ...], x) -> str:
  """"frozen" for the params a PETL method does not train (read from the path: `PETLAST` puts the method's
  name first), else "default"."""
  del x
  if path[0] in adapters.KINDS:
    return "default" if adapters.trainable(path[0], path[1:]) else "frozen"
  return "default"


def trainable_count(model) -> tuple[int, int]:
  """(trainable, total) param counts of `model` under `param_groups`."""
  leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
  sizes = [(optim.param_path(path), int(np.prod(x.shape))) for path, x in leaves]
  return sum(n for p, n in sizes if param_groups(p, None) != "frozen"), sum(n for _, n in sizes)


@functools.lru_cache(maxsize=None)
def _report_trainable(kind: str, trainable: int, total: int) -> None:
  """Printed once per process and model, though the trainer builds the model several times (shape, init)."""
  if jax.process_index() == 0:
    print(f"PETL {kind}: {trainable:,} of {total:,} params train ({100 * trainable / total:.3f}%); "
          "the rest are frozen (no update, no optimizer state)")


def crop_samples(cfg) -> int:
  """Samples that give exactly `model.max_frames` Kaldi frames."""
  return WINDOW + HOP * (cfg.model.max_frames - 1)


def fbank(batch, cfg) -> jax.Array:
  """Normalised (B, max_frames, mel) Kaldi fbank of the padded audio, zero past each clip's end."""
  fb_BxTxF, frames_B = features.kaldi_fbank(batch["audio"], SAMPLE_RATE, cfg.model.num_mel_bins,
                                            lengths_B=batch["audio_lengths"])
  fb_BxTxF = features.pad_or_crop_frames(fb_BxTxF, cfg.model.max_frames, frames_B)
  return features.ast_normalize(fb_BxTxF).astype(cfg.model.dtype)


def ssast_terms(model, fbank_BxTxF, key, cfg) -> dict[str, jax.Array]:
  """Per-example SSAST `loss` (nce_weight · nce + mse_weight · mse), `nce`, `mse` and masked-patch `accuracy`."""
  s = cfg.ssast
  grid = model_config(cfg).grid(fbank_BxTxF.shape[1])
  idx_BxM = masking.batch_masks(key, fbank_BxTxF.shape[0], grid, s.mask_patches, s.masking, tuple(s.cluster_sizes))
  terms = model(fbank_BxTxF, idx_BxM)
  return {"loss": s.nce_weight * terms["nce"] + s.mse_weight * terms["mse"], **terms}


def _ssast_per_example(model, batch, key, cfg):
  terms = ssast_terms(model, fbank(batch, cfg), key, cfg)
  return terms.pop("loss"), terms, batch["valid"].astype(jnp.float32)


def _per_example(model, batch, key, cfg):
  """(loss_B, {metric: values_B}, valid_B)."""
  if task(cfg) == "ssast":
    return _ssast_per_example(model, batch, key, cfg)
  logits_BxC = model(fbank(batch, cfg))
  labels_B = batch["speaker_id"]
  ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
  correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
  return ce_B, {"accuracy": correct_B}, batch["valid"].astype(jnp.float32)


def loss(model, batch, key, step, cfg):
  """Mean over the valid rows; SSAST draws its masks from `key` (the step's), so a resumed run draws the same."""
  del step
  loss_B, metrics, valid_B = _per_example(model, batch, key, cfg)
  n = jnp.maximum(valid_B.sum(), 1.0)
  metrics = {k: (v * valid_B).sum() / n for k, v in metrics.items()}
  if isinstance(model, PETLAST):  # a constant, so metrics.jsonl records it with every logged step
    trainable, total = trainable_count(model)
    metrics["trainable_fraction"] = jnp.float32(trainable / total)
  return (loss_B * valid_B).sum() / n, metrics


def evaluate(model, batch, cfg):
  """{name: (sum, count)}; SSAST masks are drawn from a fixed key (`cfg.seed`), the same for every eval."""
  loss_B, metrics, valid_B = _per_example(model, batch, jax.random.PRNGKey(cfg.seed), cfg)
  return {k: ((v * valid_B).sum(), valid_B.sum()) for k, v in {"loss": loss_B, **metrics}.items()}


def make_data(cfg, split, *, train, shard_index, shard_count):
  pipeline.require_speech(cfg.data.path, "the ast family")
  _check_classes(cfg)
  size = crop_samples(cfg)
  fixed = batching.FixedBatch(pipeline.host_batch_size(cfg, shard_count), "audio", batching.Buckets((size,)),
                              drop_remainder=train)
  return pipeline.for_family(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                             map_fn=pipeline.DecodeSpeech(SAMPLE_RATE, crop_samples=size), batching=fixed)


def _check_classes(cfg) -> None:
  """A classifier with fewer classes than the dataset's speakers would take out-of-range labels (NaN losses)."""
  speakers = tfds_io.metadata(cfg.data.path).get("speakers")
  classes = model_config(cfg).num_classes
  if task(cfg) != "ssast" and speakers and len(speakers) > classes:
    raise ValueError(f"dataset {cfg.data.path} has {len(speakers)} speakers (speaker_id 0..{len(speakers) - 1}); "
                     f"the classifier has model.num_classes={classes}: set it to at least {len(speakers)}")


def batch_axes(cfg):
  rows = ("activation_batch",)
  axes = {"audio": rows + (None,), "audio_lengths": rows, "valid": rows}
  return axes if task(cfg) == "ssast" else {**axes, "speaker_id": rows}


def batch_shapes(cfg) -> dict[str, jax.ShapeDtypeStruct]:
  rows, spec = cfg.train.batch_size, jax.ShapeDtypeStruct
  shapes = {"audio": spec((rows, crop_samples(cfg)), jnp.float32), "audio_lengths": spec((rows,), jnp.int32),
            "valid": spec((rows,), jnp.bool_)}
  return shapes if task(cfg) == "ssast" else {**shapes, "speaker_id": spec((rows,), jnp.int32)}


def train_flops(cfg) -> float:
  """Forward + backward (3× forward) matmul FLOPs of one global batch."""
  m, petl = model_config(cfg), petl_config(cfg)
  f, t = m.grid()
  prompts = petl.prompts if petl is not None and petl.kind == "prompt" else 0
  (pf, pt), n, d = m.patch_shape, f * t + 2 + prompts, m.hidden

  def layer(q):  # a block computing q query tokens over n keys: k, v | q, out | q·kᵀ, p·v | MLP
    return 2 * n * 2 * d * d + 2 * q * 2 * d * d + 2 * 2 * q * n * d + 2 * 2 * q * d * m.mlp

  last = n if task(cfg) == "ssast" else (last_block_tokens(m, petl) or n)
  queries = [n] * (m.layers - 1) + [last] if m.layers else []
  forward = 2 * f * t * pf * pt * d + sum(layer(q) for q in queries)
  if task(cfg) == "ssast":  # two heads at the masked patches, and the (M, M) InfoNCE scores
    k = cfg.ssast.mask_patches
    forward += 2 * 2 * k * (d * d + d * pf * pt) + 2 * k * k * pf * pt
  else:
    forward += 2 * d * m.num_classes
  return 3.0 * forward * cfg.train.batch_size


def tokens_per_step(cfg) -> float:
  f, t = model_config(cfg).grid()
  return float(f * t * cfg.train.batch_size)


def units(batch) -> dict[str, float]:
  valid = np.asarray(batch["valid"])
  return {"examples": float(valid.sum()), "frames": float(np.asarray(batch["audio_lengths"])[valid].sum() / HOP)}


FAMILY = Family(
    name="ast", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data, batch_axes=batch_axes,
    train_flops=train_flops, units=units, tokens_per_step=tokens_per_step, param_groups=param_groups, adapt_init=adapt_init, batch_shapes=batch_shapes)
