"""The two sides of Llasa's curve parity: jaxspeech's llasa family (packed rows, loss on the speech part) and
transformers' `LlamaForCausalLM` under the LLaSA recipe as the HF `Trainer` runs it (one utterance a row, labels
−100 before <|SPEECH_GENERATION_START|> and on padding, the mean over the batch's labelled tokens; AdamW with no
decay on biases and norms, cosine schedule with linear warmup, clipping), with configs/llasa.py:tiny's settings.

The batches are the llasa family's packed rows of a code dataset written from the corpus's transcripts: each
character gives its own code and then one of `SPREAD` codes at random, so the loss has a floor, as speech
codes do. The reference trains on the same utterances, unpacked from each batch.
"""

import numpy as np
import torch
import transformers

from jaxspeech.data import pipeline, tfds_io
from jaxspeech.llasa import convert, family
from jaxspeech.text import spm
from tests.helpers import curves
from tests.helpers.llasa import CODE_FEATURES, CODES, TEXT_VOCAB, VOCAB, tiny_config

SPREAD = 8


def codes(text: str, rng: np.random.Generator) -> np.ndarray:
  """Two frames per character: (7 · code point) mod CODES, then that plus one of `SPREAD` offsets."""
  first_N = (7 * np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)) % CODES
  second_N = (first_N + 1 + rng.integers(0, SPREAD, len(first_N))) % CODES
  return np.stack([first_N, second_N], 1).reshape(-1).astype(np.int32)


def code_data(corpus: str, root: str) -> tuple[str, str]:
  """(code dataset, sentencepiece model) in `root`, of the corpus's train transcripts (the last 32 validate)."""
  source = tfds_io.data_source(corpus, "train")
  texts = [source[i]["text"].decode() for i in range(len(source))]
  model_path = f"{root}/spm.model"
  spm.train_bpe(texts, vocab_size=TEXT_VOCAB).save(model_path)
  rng = np.random.default_rng(0)
  examples = [{"codes": codes(t, rng), "text": t, "speaker": "s0"} for t in texts]
  path = tfds_io.write_dataset(f"{root}/codes/1.0.0", CODE_FEATURES,
                               {"train": examples[:-32], "validation": examples[-32:]})
  return str(path), model_path


def utterances(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """(input ids, attention mask, labels) of a packed batch's segments, one a row, padded on the right."""
  rows = []
  for r in np.flatnonzero(batch["valid"]):
    segments_L = batch["segment_ids"][r]
    for s in np.unique(segments_L[segments_L > 0]):
      slots = np.flatnonzero(segments_L == s)
      rows.append(np.append(batch["inputs"][r, slots], batch["targets"][r, slots[-1]]))
  n = max(map(len, rows))
  ids_BxN = np.zeros((len(rows), n), np.int64)
  mask_BxN = np.zeros((len(rows), n), np.int64)
  labels_BxN = np.full((len(rows), n), -100, np.int64)
  for i, tokens in enumerate(rows):
    start = np.flatnonzero(tokens == VOCAB.special("SPEECH_GENERATION_START"))[0]
    ids_BxN[i, :len(tokens)], mask_BxN[i, :len(tokens)] = tokens, 1
    labels_BxN[i, start:len(tokens)] = tokens[start:]
  return torch.from_numpy(ids_BxN), torch.from_numpy(mask_BxN), torch.from_numpy(labels_BxN)


def reference(cfg, hf: transformers.LlamaForCausalLM) -> curves.Reference:
  decay = set(transformers.Trainer.get_decay_parameter_names(None, hf))
  optimizer = curves.adamw(hf.named_parameters(), decay.__contains__, cfg.optim)
  scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.train.steps)

  def loss(batch):
    ids_BxN, mask_BxN, labels_BxN = utterances(batch)
    return hf(input_ids=ids_BxN, attention_mask=mask_BxN, labels=labels_BxN).loss
  return curves.Reference(hf, loss, optimizer, scheduler, cfg.optim.clip_norm)


def sides(corpus: str, root: str, steps: int, warmup: int = 20, seed: int = 0,
          lr_scales: tuple[float, ...] = ()) -> tuple[dict, object]:
  """({"jaxspeech": ..., "transformers": ..., "jaxspeech lr ×s": ... for s in `lr_scales`}, batches), all from
  HF's initialisation of the tiny Llama (seed `seed`); `root` holds the code dataset."""
  cfg = tiny_config(code_data(corpus, root))
  cfg.train.steps, cfg.optim.warmup_steps = steps, warmup
  cfg.llasa.seq_len = 512  # configs/llasa.py:tiny's: two or three utterances a row
  model_cfg = family.model_config(cfg)
  torch.manual_seed(seed)
  hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**convert.llama_to_hf_config(model_cfg))).train()
  params = convert.from_hf_state_dict(hf.state_dict(), model_cfg)
  out = {"jaxspeech": curves.Engine(family.FAMILY, cfg, params), "transformers": reference(cfg, hf)}
  return {**out, **curves.lr_variants(family.FAMILY, cfg, params, lr_scales)}, pipeline.make_iterator(
      family.make_data(cfg, cfg.data.train_split, train=True, shard_index=0, shard_count=1))
