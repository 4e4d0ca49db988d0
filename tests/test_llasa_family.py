"""The Llasa family: sequence format, loss masking across packed segments, the code-dataset pipeline, and
`jaxspeech train --config=configs/llasa.py:tiny` end to end on a test-built code dataset."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxspeech.data import pipeline
from jaxspeech.llasa import family, objective
from jaxspeech.llasa.vocab import LlasaVocab
from tests.helpers import ROOT, load_config
from tests.helpers.llasa import CODES, TEXT_VOCAB, VOCAB, tiny_config

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}


def test_sequence_layout_and_prompt():
  seq = objective.sequence(VOCAB, [5, 6], [0, 63])
  names = ["TEXT_UNDERSTANDING_START", "TEXT_UNDERSTANDING_END", "SPEECH_GENERATION_START", "SPEECH_GENERATION_END"]
  tus, tue, sgs, sge = (VOCAB.special(n) for n in names)
  assert seq.tolist() == [tus, 5, 6, tue, sgs, VOCAB.speech_start, VOCAB.speech_start + 63, sge]
  assert objective.prompt(VOCAB, [6], ref_text_ids=[5], ref_codes=[1]).tolist() == [
      tus, 5, 6, tue, sgs, VOCAB.speech_start + 1]
  trained = np.asarray(objective.speech_targets(jnp.asarray(seq[1:]), VOCAB))
  assert trained.tolist() == [False, False, False, True, True, True, True]  # from the speech start onward


def test_no_loss_term_crosses_a_segment_boundary(code_data):
  """Changing segment 2's tokens changes none of segment 1's loss terms (and does change its own)."""
  cfg = tiny_config(code_data)
  model = family.build_model(cfg, nnx.Rngs(0))
  a = objective.sequence(VOCAB, [10, 11, 12], [1, 2, 3, 4, 5])
  b = objective.sequence(VOCAB, [20, 21], [6, 7, 8, 9])

  def packed(b):
    inputs = np.concatenate([a[:-1], b[:-1]])[None]
    targets = np.concatenate([a[1:], b[1:]])[None]
    segments = np.repeat([1, 2], [len(a) - 1, len(b) - 1])[None]
    positions = np.concatenate([np.arange(len(a) - 1), np.arange(len(b) - 1)])[None]
    return {"inputs": inputs, "targets": targets, "segment_ids": segments, "positions": positions,
            "weights": np.ones_like(inputs, np.float32)}

  changed = b.copy()
  changed[1:3] = [30, 31]
  changed[-3] = VOCAB.speech_start + 40
  terms = nnx.jit(objective.token_terms, static_argnums=(2, 3))
  ce1, _, w1 = terms(model, packed(b), VOCAB, False)
  ce2, _, _ = terms(model, packed(changed), VOCAB, False)
  n = len(a) - 1
  np.testing.assert_array_equal(np.asarray(ce1[0, :n]), np.asarray(ce2[0, :n]))
  assert np.abs(np.asarray(ce1[0, n:] - ce2[0, n:])).max() > 1e-3
  assert np.asarray(w1).sum() == 2 + 5 + 2 + 4  # speech start, codes and end of each segment


def test_pipeline_packs_code_dataset_rows(code_data):
  cfg = tiny_config(code_data)
  ds = family.make_data(cfg, "train", train=True, shard_index=0, shard_count=1)
  batch = next(iter(ds))
  assert batch["inputs"].shape == (cfg.train.batch_size, 256)
  assert batch["segment_ids"].max() > 1  # several utterances per row
  row, seg = batch["inputs"][0], batch["segment_ids"][0]
  starts = np.flatnonzero(np.diff(np.concatenate([[0], seg])) != 0)
  assert all(row[s] == VOCAB.special("TEXT_UNDERSTANDING_START") for s in starts if seg[s] > 0)
  assert all(batch["positions"][0][s] == 0 for s in starts)
  stats = pipeline.pipeline_stats(iter(ds))
  assert stats.get("decode_errors", 0) == 0


@pytest.mark.slow
def test_train_cli_loss_falls(code_data, tmp_path):
  path, tokenizer = code_data
  cmd = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/llasa.py:tiny", f"--workdir={tmp_path}",
         f"--config.data.path={path}", f"--config.llasa.tokenizer={tokenizer}",
         f"--config.llasa.text_vocab_size={TEXT_VOCAB}", f"--config.llasa.num_speech_tokens={CODES}",
         f"--config.model.vocab_size={VOCAB.size}", "--config.llasa.seq_len=256", "--config.train.steps=40",
         "--config.train.log_every=2", "--config.train.eval_every=40", "--config.train.checkpoint_every=40"]
  result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    metrics = [json.loads(line) for line in f]
  losses = [m["loss"] for m in metrics if "loss" in m]
  # ln 328 = 5.8 at chance; the codes follow the characters, so 40 steps bring the loss well down
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses
  assert any("eval/loss" in m for m in metrics)
  assert {"tokens_per_s", "flops_per_s"} <= set([m for m in metrics if "loss" in m][-1])


def test_vocab_too_small_for_the_llasa_ids_is_refused(code_data):
  cfg = tiny_config(code_data)
  cfg.model.vocab_size = VOCAB.size - 1
  with pytest.raises(ValueError, match="smaller than the Llasa vocabulary"):
    family.build_model(cfg, nnx.Rngs(0))


@pytest.mark.parametrize("variant", ["150m", "1b", "3b", "8b"])
def test_large_variants_build_abstractly_with_the_published_shapes(variant):
  cfg = load_config("llasa", variant)
  model = nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  padding = (model.cfg.padded_vocab - model.cfg.vocab_size) * model.cfg.hidden * (1 if model.cfg.tie_embeddings else 2)
  expected = {"150m": 146_424_320, "1b": 1_370_048_512, "3b": 4_009_454_592, "8b": 8_567_197_696}[variant]
  assert n - padding == expected
  assert model.cfg.vocab_size == 193_800


def test_init_from_a_smaller_tied_llama_extends_the_vocabulary(code_data):
  """adapt_init: a tied, unscanned 300-id Llama into the untied, scanned Llasa model of 328 ids."""
  from jaxspeech.convert import mapping  # pylint: disable=import-outside-toplevel
  from jaxspeech.llasa.model import Llama, LlamaConfig  # pylint: disable=import-outside-toplevel
  cfg = tiny_config(code_data)
  cfg.model.update(scan_layers=True, tie_embeddings=False)
  source = LlamaConfig(**{**cfg.model.to_dict(), "vocab_size": 300, "scan_layers": False, "tie_embeddings": True})
  loaded = mapping.flatten(nnx.to_pure_dict(nnx.state(Llama(source, nnx.Rngs(0)), nnx.Param)))
  params = family.adapt_init(loaded, {"family": "llasa", "model": dataclasses.asdict(source)}, cfg)
  target = mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0))), nnx.Param))
  assert {k: v.shape for k, v in params.items()} == target
  old = loaded["embed.embedding"][:300]
  np.testing.assert_array_equal(params["embed.embedding"][:300], old)
  np.testing.assert_allclose(params["embed.embedding"][300:VOCAB.size], np.broadcast_to(old.mean(0), (28, 64)),
                             rtol=1e-6)
  assert not params["embed.embedding"][VOCAB.size:].any()  # padding rows
  np.testing.assert_array_equal(params["lm_head.kernel"][:, :300], old.T)
  np.testing.assert_array_equal(params["blocks.up.kernel"][1], loaded["blocks.1.up.kernel"])


def test_int16_codes_above_32767_are_read_as_unsigned(code_data):
  tokenize = family.Tokenize(code_data[1], LlasaVocab(TEXT_VOCAB))
  codes = np.array([5, 40_000, 65_535], np.uint16).view(np.int16)
  tokens = tokenize({"codes": codes, "text": b"hello"}, None)["tokens"]
  assert LlasaVocab(TEXT_VOCAB).ids_to_codes(tokens).tolist() == [5, 40_000, 65_535]


def test_hf_tokenizer_json_gives_the_text_ids(tmp_path):
  from tests.helpers.llama import save_tokenizer  # pylint: disable=import-outside-toplevel
  save_tokenizer(tmp_path, 50)
  tokenize = family.Tokenize(str(tmp_path / "tokenizer.json"), LlasaVocab(TEXT_VOCAB))
  tokens = tokenize({"codes": np.array([1, 2], np.int32), "text": b"w3 w7"}, None)["tokens"]
  assert tokens[1:3].tolist() == [3, 7]  # after TEXT_UNDERSTANDING_START, no BOS
  too_small = family.Tokenize(str(tmp_path / "tokenizer.json"), LlasaVocab(40))
  with pytest.raises(ValueError, match="has 50 pieces"):
    too_small({"codes": np.array([1], np.int32), "text": b"w1"}, None)
