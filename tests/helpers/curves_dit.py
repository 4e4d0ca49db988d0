"""The two sides of the DiT's curve parity: jaxspeech's dit family and f5-tts' `CFM(DiT)` under F5's `Trainer`
recipe (AdamW, linear warmup from 1e-8 then linear decay to 1e-8 over the run, clipping), on the dit family's
frame-budget batches of the corpus.

Set the same on both sides, where the two recipes differ on purpose:
- F5's DiT trains with dropout 0.1 (its default, which F5TTS_v1_Base.yaml keeps); ours has none: 0 on both;
- F5's AdamW decays every param; ours spares biases, norm scales and 1-D params: ours on both;
- F5 draws the CFG drops once per batch, ours per example: left as they are (the same rates, so the same mean);
- F5 reads the mel from its dataset: both take the dit family's on-device log-mel of the batch's audio.
"""

import random

import jax
import numpy as np
import torch

from jaxspeech.data import pipeline, speech_text
from jaxspeech.dit import convert, family, vocab
from tests.helpers import curves, load_config
from tests.helpers.dit import CFM, DiT, f5_kwargs


# Half of configs/dit.py:tiny's width and depth, and buckets (6 s, 10 s) that pad the corpus's clips less than
# (4 s, 10 s): 300 steps of each side in minutes on 2 cores.
SHAPE = dict(dim=64, depth=2, heads=4, dim_head=16, ff_mult=2, text_dim=32, conv_layers=1)


def config(corpus: str, steps: int, warmup: int, frame_budget: int):
  """configs/dit.py:tiny's recipe on `corpus` at `SHAPE`, `steps` long, no EMA (it does not change the trained
  model's loss)."""
  cfg = load_config("dit", "tiny")
  cfg.model.update(**SHAPE)
  cfg.data.update(path=corpus, frame_budget=frame_budget, bucket_seconds=(6, 10))
  cfg.train.update(steps=steps, ema_decay=0.0)
  cfg.optim.warmup_steps = warmup
  return cfg


def reference(cfg, dit: torch.nn.Module, params: dict[str, np.ndarray], seed: int) -> curves.Reference:
  """F5's trainer on `dit` (`params` are its weights in our layout, for our decay mask)."""
  random.seed(seed)  # F5 draws the CFG drops with `random.random()`
  torch.manual_seed(seed)
  o = cfg.objective
  cfm = CFM(transformer=dit, num_channels=cfg.model.mel_dim, audio_drop_prob=o.audio_drop_prob,
            cond_drop_prob=o.cond_drop_prob, frac_lengths_mask=tuple(o.frac_lengths)).train()
  decay, table = curves.our_decay(params), convert.table(family.model_config(cfg))
  optimizer = curves.adamw(dit.named_parameters(), lambda name: decay[table[name][0]], cfg.optim)
  warmup, steps = cfg.optim.warmup_steps, cfg.train.steps
  scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [  # as f5_tts.model.trainer.Trainer.train builds it
      torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-8, end_factor=1.0, total_iters=warmup),
      torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=1e-8, total_iters=steps - warmup)],
      milestones=[warmup])
  mel = jax.jit(lambda batch: family.mel(batch, cfg))

  def loss(batch):
    mel_BxTxM, frames_B = (np.asarray(x) for x in mel(batch))
    rows = np.asarray(batch["valid"])
    frames_B = frames_B[rows]
    n = frames_B.max()  # F5's collate pads to the batch's longest mel, with zeros
    mel_BxTxM = np.where(np.arange(n)[:, None] < frames_B[:, None, None], mel_BxTxM[rows, :n], 0.0)
    text_BxNt = np.where(batch["text_mask"], batch["text"], -1)[rows]
    value, _, _ = cfm(torch.from_numpy(mel_BxTxM).float(), torch.from_numpy(text_BxNt).long(),
                      lens=torch.from_numpy(frames_B).long())
    return value
  return curves.Reference(cfm, loss, optimizer, scheduler, cfg.optim.clip_norm)


def sides(corpus: str, steps: int, warmup: int = 100, frame_budget: int = 4096, seed: int = 0,
          lr_scales: tuple[float, ...] = ()) -> tuple[dict, object]:
  """({"jaxspeech": ..., "f5-tts": ..., "jaxspeech lr ×s": ... for s in `lr_scales`}, batches), all from F5's
  initialisation of the tiny DiT (seed `seed`)."""
  cfg = config(corpus, steps, warmup, frame_budget)
  torch.manual_seed(seed)
  dit = DiT(**f5_kwargs(family.model_config(cfg)))
  params = convert.from_f5_state_dict(dit.state_dict(), family.model_config(cfg))
  out = {"jaxspeech": curves.Engine(family.FAMILY, cfg, params), "f5-tts": reference(cfg, dit, params, seed)}
  return {**out, **curves.lr_variants(family.FAMILY, cfg, params, lr_scales)}, batches(cfg)


def batches(cfg):
  """The dit family's train batches for one device (`make_data` rounds the rows up to a multiple of the local
  devices: 8 under the tests)."""
  tokens = vocab.of_config(cfg)
  return pipeline.make_iterator(pipeline.for_family(
      cfg, cfg.data.train_split, train=True, shard_index=0, shard_count=1,
      map_fn=pipeline.DecodeSpeech(family.SAMPLE_RATE, features=family.AddText(tokens)),
      batching=speech_text.frame_budget(cfg, 1, family.SAMPLE_RATE, family.HOP, row_multiple=1)))
