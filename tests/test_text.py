import numpy as np
import pytest

from jaxspeech.data import tfds_io
from jaxspeech.llasa import vocab as llasa_vocab
from jaxspeech.text import spm


def test_llasa_ids_match_published_layout():
  v = llasa_vocab.LlasaVocab()
  assert v.size == 193_800
  assert [v.special(t) for t in llasa_vocab.SPECIAL_TOKENS] == list(range(128_256, 128_264))
  assert v.special("SPEECH_GENERATION_END") == 128_261
  np.testing.assert_array_equal(v.codes_to_ids([0, 1, 65_535]), [128_264, 128_265, 193_799])
  tokens = v.added_tokens()
  assert tokens[:2] == ["<|TEXT_GENERATION_START|>", "<|TEXT_GENERATION_END|>"]
  assert tokens[8] == "<|s_0|>" and tokens[-1] == "<|s_65535|>" and len(tokens) == 8 + 65_536


def test_codes_round_trip_and_filter():
  v = llasa_vocab.LlasaVocab(text_vocab_size=1000)
  codes = np.random.default_rng(0).integers(0, 65_536, size=50)
  ids = v.codes_to_ids(codes)
  mixed = np.concatenate([[5, v.special("SPEECH_GENERATION_START")], ids, [v.special("SPEECH_GENERATION_END")]])
  np.testing.assert_array_equal(v.ids_to_codes(mixed), codes)
  with pytest.raises(ValueError, match="65536"):
    v.codes_to_ids([65_536])
  with pytest.raises(KeyError, match="NOT_A_TOKEN"):
    v.special("NOT_A_TOKEN")


def test_bpe_on_corpus_round_trips_and_is_deterministic(corpus_path, tmp_path):
  src = tfds_io.data_source(corpus_path, "train")
  texts = [src[i]["text"].decode() for i in range(len(src))]
  tok = spm.train_bpe(texts, vocab_size=300)
  assert tok.vocab_size == 300
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert spm.train_bpe(texts, vocab_size=300).model_proto == tok.model_proto
  tok.save(tmp_path / "t.model")
  loaded = spm.Tokenizer.load(tmp_path / "t.model")
  held = tfds_io.data_source(corpus_path, "test")[0]["text"].decode()
  assert loaded.decode(loaded.encode(held)) == held
  assert len(loaded.encode(held)) < len(held)  # it learned merges


def test_missing_model_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    spm.Tokenizer.load(tmp_path / "nope.model")
