"""Llasa train-step throughput: jaxspeech's compiled step vs transformers `LlamaForCausalLM` + `torch.optim.AdamW`.

Same shapes, same process, rounds of one step per side (a round during which other processes took more than
`--max-other` of the CPU is rerun; the ratio is the median of the rounds' ratios): hidden 512, 8 layers, 8 heads (4 KV heads), MLP 2048, a 8,192-id vocab,
one packed row of `--seq` tokens, float32, AdamW with clipping at 1.0 on both sides. Our side is the engine's
own `make_train_step` with the llasa family's loss (packed-row attention, loss on every target).

    .venv/bin/python benchmarks/llasa_train.py [--seq 1024] [--rounds 6] [--write]
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np

import common
from ast_train import median_ms, paired, ratios

SHAPE = dict(vocab_size=8192, hidden=512, layers=8, heads=8, kv_heads=4, head_dim=64, mlp=2048)
SECTION = "Llasa train step vs transformers LlamaForCausalLM (CPU)"


def jax_config(seq: int):
  """The llasa family config of `SHAPE` with one row of `seq` tokens, every target trained."""
  import ml_collections
  from jaxspeech.llasa.model import LlamaConfig
  from jaxspeech.train import config as config_lib
  cfg = config_lib.defaults()
  cfg.family = "llasa"
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(LlamaConfig(**SHAPE, tie_embeddings=False)))
  cfg.llasa = ml_collections.ConfigDict(dict(text_vocab_size=SHAPE["vocab_size"] - 8, num_speech_tokens=0,
                                             train_text=True, seq_len=seq))
  cfg.train.batch_size = 1
  cfg.optim.update(warmup_steps=0, lr=1e-4)
  return cfg


def packed_batch(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """`train.batch_size` rows of `llasa.seq_len` random ids, one segment each."""
  rows, seq = cfg.train.batch_size, cfg.llasa.seq_len
  ids = np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (rows, seq + 1)).astype(np.int32)
  ones = np.ones((rows, seq), np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": ones,
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (rows, seq)).copy(),
          "weights": ones.astype(np.float32), "valid": np.ones(rows, bool)}


def jax_side(cfg) -> common.EngineStep:
  from jaxspeech.llasa import family
  return common.EngineStep(family.FAMILY, cfg, packed_batch(cfg))


class TorchSide:
  def __init__(self, seq: int):
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["hidden"], num_hidden_layers=SHAPE["layers"],
        num_attention_heads=SHAPE["heads"], num_key_value_heads=SHAPE["kv_heads"], head_dim=SHAPE["head_dim"],
        intermediate_size=SHAPE["mlp"], tie_word_embeddings=False, attn_implementation="sdpa")
    self.model = transformers.LlamaForCausalLM(config).train()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
    self.ids = torch.tensor(packed_batch(jax_config(seq))["inputs"], dtype=torch.long)

  def train_step(self) -> float:
    import torch
    t0 = time.perf_counter()
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.model(self.ids, labels=self.ids).loss  # HF shifts the labels inside
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.optimizer.step()
    return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seq", type=int, default=1024)
  parser.add_argument("--rounds", type=int, default=6, help="rounds of one step per side (after one warm-up step)")
  parser.add_argument("--max-other", type=float, default=0.25, help="CPU share of other processes that reruns a round")
  parser.add_argument("--write", action="store_true", help=f"write the figures to {common.RESULTS}")
  args = parser.parse_args()
  sides = {"jaxspeech": jax_side(jax_config(args.seq)), "transformers": TorchSide(args.seq)}
  for side in sides.values():
    side.train_step()
  times, worst = paired(sides, "train_step", args.rounds, args.max_other, retries=2)
  ms = {name: median_ms(t) for name, t in times.items()}
  tokens_per_s = {name: args.seq / (m / 1e3) for name, m in ms.items()}
  ratio = statistics.median(ratios(times, "transformers", "jaxspeech"))
  text = "\n".join([
      f"## {SECTION}", "",
      f"`benchmarks/llasa_train.py --seq {args.seq}`: {common.machine()}; "
      f"{common.versions(('jax', 'flax', 'torch', 'transformers'))}; {time.strftime('%Y-%m-%d', time.gmtime())} UTC.",
      f"Hidden {SHAPE['hidden']}, {SHAPE['layers']} layers, {SHAPE['heads']} heads ({SHAPE['kv_heads']} KV), MLP "
      f"{SHAPE['mlp']}, vocab {SHAPE['vocab_size']}, one row of {args.seq} tokens, float32, AdamW + clipping; "
      f"{args.rounds} rounds of one step per side, medians (other processes took up to {worst:.0%} of "
      "the CPU in a kept round).", "",
      "| side | ms / step | tokens/s |", "| --- | ---: | ---: |",
      *[f"| {name} | {ms[name]:.0f} | {tokens_per_s[name]:.0f} |" for name in sides], "",
      f"Ratio (jaxspeech / transformers tokens/s, the median of the rounds' ratios): **{ratio:.2f}×**; our step "
      "compiled in "
      f"{sides['jaxspeech'].compile_s:.1f} s."
      + (" The machine was busy throughout (rounds kept after retries): absolute figures are far below an idle "
         "machine's; only the ratio of paired steps is meaningful, and it is noisy." if worst > args.max_other
         else ""), ""])
  print(text)
  if args.write:
    common.write_section(SECTION, text)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main()
