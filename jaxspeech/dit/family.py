"""The dit family: F5-TTS / E2-TTS flow matching on log-mels computed on the device.

Audio is resampled to 24 kHz in the input pipeline and grouped into frame-budget batches (about
`data.frame_budget` mel frames each, similar lengths together, one compile per bucket of
`data.bucket_seconds`); transcripts become character ids of the run's vocabulary (`jaxspeech.dit.vocab`, kept
in the workdir), padded to `data.max_text`. The step computes F5's Vocos log-mel (100 bins, hop 256) and the
flow-matching loss. A config with a `distill` section instead distils a trained DiT (`train.init_from`) into a
few-step student (`jaxspeech.dit.consistency`).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np

from jaxspeech.audio import features
from jaxspeech.data import per_step, pipeline, speech_text
from jaxspeech.dit import consistency, sample, vocab
from jaxspeech.dit.model import DiTConfig, build, config_from
from jaxspeech.dit.objective import Objective, flow_matching_loss
from jaxspeech.train.family import Family
from jaxspeech.workdir import Workdir

SAMPLE_RATE = 24_000
HOP = 256


def model_config(cfg) -> DiTConfig:
  return config_from(cfg.model.to_dict())


def objective(cfg) -> Objective:
  o = cfg.objective
  return Objective(tuple(o.frac_lengths), o.audio_drop_prob, o.cond_drop_prob)


def distill(cfg) -> consistency.Distill | None:
  return consistency.Distill(**cfg.distill.to_dict()) if "distill" in cfg else None


def build_model(cfg, rngs):
  """The DiT; for distillation, with its frozen teacher beside it as `teacher` (the student's params stay where
  a DiT's are, so the F5 export and the samplers read a distilled workdir as any other)."""
  model = build(model_config(cfg), rngs)
  if distill(cfg):
    model.teacher = build(model_config(cfg), rngs)
  return model


def param_group(path: tuple[str, ...], leaf) -> str:
  del leaf
  return "frozen" if consistency.is_teacher(path) else "default"


def adapt_init(loaded: dict, source_config: dict, cfg) -> dict:
  del source_config
  return consistency.with_teacher(loaded) if distill(cfg) else loaded


def prepare(cfg, workdir: str):
  """`vocab.prepare`; a distillation run reads its teacher's vocabulary, and refuses to start without a teacher."""
  if distill(cfg) and workdir:
    if not cfg.train.init_from:
      raise ValueError("distillation starts from a trained DiT, its teacher: --config.train.init_from=WORKDIR")
    if not cfg.model.get("vocab_file"):
      cfg = copy.deepcopy(cfg)
      cfg.model.vocab_file = vocab.file_of_workdir(cfg.train.init_from, Workdir(cfg.train.init_from).config)
  return vocab.prepare(cfg, workdir)


def mel(batch, cfg):
  """(log-mel (B, T, 100) in the compute dtype, frames_B); rows that hold no example have 0 frames."""
  mel_BxTxM, frames_B = features.log_mel(batch["audio"], SAMPLE_RATE, hop_length=HOP,
                                         n_mels=cfg.model.mel_dim, lengths_B=batch["audio_lengths"])
  return mel_BxTxM, jnp.where(batch["valid"], frames_B, 0)


def text_ids(batch):
  """Character ids with F5's −1 padding."""
  return jnp.where(batch["text_mask"], batch["text"], -1)


def _loss(model, batch, key, cfg):
  mel_BxTxM, frames_B = mel(batch, cfg)
  distilling = distill(cfg)
  if distilling:
    return consistency.consistency_loss(model, model.teacher, mel_BxTxM, frames_B, text_ids(batch), key,
                                        distilling, objective(cfg))
  return flow_matching_loss(model, mel_BxTxM, frames_B, text_ids(batch), key, objective(cfg))


def loss(model, batch, key, step, cfg):
  del step
  return _loss(model, batch, key, cfg)[0], {}


def evaluate(model, batch, cfg):
  """The masked-span MSE (flow matching's, or distillation's) with draws from a fixed key (`cfg.seed`), the same
  for every eval."""
  _, se_B, count_B = _loss(model, batch, jax.random.PRNGKey(cfg.seed), cfg)
  return {"loss": (se_B.sum(), count_B.sum())}


class AddText:
  """A `DecodeSpeech` features hook: the transcript as vocabulary ids."""

  def __init__(self, tokens: list[str]):
    self.tokens = tokens

  def __call__(self, example, record):
    return {**example, "text": vocab.encode(record["text"].decode(), self.tokens)}


def make_data(cfg, split, *, train, shard_index, shard_count):
  pipeline.require_speech(cfg.data.path, "the dit family", extra=("text",))
  tokens = vocab.of_config(cfg)
  if len(tokens) > cfg.model.text_num_embeds:
    raise ValueError(f"the vocabulary has {len(tokens)} tokens but model.text_num_embeds is "
                     f"{cfg.model.text_num_embeds}")
  return pipeline.for_family(cfg, split, train=train, shard_index=shard_index, shard_count=shard_count,
                             map_fn=pipeline.DecodeSpeech(SAMPLE_RATE, features=AddText(tokens)),
                             batching=speech_text.frame_budget(cfg, shard_count, SAMPLE_RATE, HOP))


def batch_axes(cfg):
  del cfg
  return speech_text.AXES


def batch_shapes(cfg) -> dict[str, jax.ShapeDtypeStruct]:
  return speech_text.batch_shapes(cfg, SAMPLE_RATE, HOP)


def train_flops(cfg) -> float:
  """Forward + backward (3× forward) matmul FLOPs of one global batch of `data.frame_budget` frames, at the
  longest bucket's length (attention's share); a distillation step's forwards (`consistency.forwards_per_step`)
  instead."""
  m = model_config(cfg)
  n = max(cfg.data.bucket_seconds) * SAMPLE_RATE / HOP
  inner = m.heads * m.dim_head
  per_frame = (2 * (4 * m.dim * inner + 2 * m.ff_mult * m.dim * m.dim) + 4 * n * inner) * m.depth
  per_frame += 2 * ((2 * m.mel_dim + m.text_dim) * m.dim + 2 * 31 * m.dim * m.dim / 16 + m.dim * m.mel_dim)
  forwards = consistency.forwards_per_step(distill(cfg)) if distill(cfg) else 3
  return forwards * per_frame * cfg.data.frame_budget


def inference(cfg) -> dict[str, tuple]:
  """One sampler step (the guided flow, conditioned and unconditioned rows together) over a microbatch of the
  longest bucket, as `jaxspeech dit synthesize` runs it at every ODE step (F5's CFG strength 2)."""
  shapes, spec = batch_shapes(cfg), jax.ShapeDtypeStruct
  rows, frames = shapes["audio"].shape[0], shapes["audio"].shape[1] // HOP
  mel, rows_axes = spec((rows, frames, cfg.model.mel_dim), jnp.float32), ("activation_batch",)

  def step(model, x, cond, text, t, valid):
    return sample.guided_flow(model, x, cond, text, t, valid, cfg_strength=2.0)

  inputs = {"x": mel, "cond": mel, "text": shapes["text"], "t": spec((rows,), jnp.float32),
            "valid": spec((rows, frames), jnp.bool_)}
  axes = {"x": rows_axes + (None, None), "cond": rows_axes + (None, None), "text": rows_axes + (None,),
          "t": rows_axes, "valid": rows_axes + (None,)}
  return {"sampler step": (step, inputs, axes)}


def tokens_per_step(cfg) -> float:
  """The mel frames of a batch (its utterances', padding not counted), measured on the run's first train batches."""
  return per_step.mean_units(cfg, make_data, units, "frames")


def units(batch) -> dict[str, float]:
  valid = np.asarray(batch["valid"])
  return {"examples": float(valid.sum()), "frames": float(np.asarray(batch["audio_lengths"])[valid].sum() / HOP)}


FAMILY = Family(name="dit", build_model=build_model, loss=loss, evaluate=evaluate, make_data=make_data,
                batch_axes=batch_axes, train_flops=train_flops, units=units, tokens_per_step=tokens_per_step, batch_shapes=batch_shapes,
                param_groups=param_group, adapt_init=adapt_init, prepare=prepare, inference=inference)
