"""The Llasa family at test size: its vocabulary, the code dataset's features and codes (the `code_data`
fixture of tests/conftest.py writes that dataset), and the tiny config on it."""

import numpy as np
import tensorflow_datasets as tfds

from jaxspeech.llasa.vocab import LlasaVocab
from tests.helpers import load_config

TEXT_VOCAB, CODES = 256, 64
VOCAB = LlasaVocab(TEXT_VOCAB, CODES)
CODE_FEATURES = tfds.features.FeaturesDict({
    "codes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "text": tfds.features.Text(),
    "speaker": tfds.features.Text(),
})


def derived_codes(text: str) -> np.ndarray:
  """Codes a model can learn from the text: one frame per character, a function of the character."""
  return np.asarray([(7 * ord(c)) % CODES for c in text], np.int32)


def tiny_config(code_data):
  cfg = load_config("llasa", "tiny")
  cfg.data.path, cfg.llasa.tokenizer = code_data
  cfg.llasa.update(text_vocab_size=TEXT_VOCAB, num_speech_tokens=CODES, seq_len=256)
  cfg.model.vocab_size = VOCAB.size
  return cfg
