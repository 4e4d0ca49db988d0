import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> str:
  """The default corpus that `make test` builds (JAXSPEECH_CORPUS), else a small one built here."""
  path = os.environ.get("JAXSPEECH_CORPUS")
  if path and os.path.exists(os.path.join(path, "dataset_info.json")):
    return path
  from jaxspeech.data.synth import corpus
  return corpus.synthesize(str(tmp_path_factory.mktemp("corpus")), num_utterances=240, seed=0)


@pytest.fixture(scope="module")
def code_data(tmp_path_factory):
  """(dataset path, sentencepiece model path): 160 train and 16 validation utterances of derived codes."""
  from jaxspeech.data import tfds_io
  from jaxspeech.data.synth import sentences
  from jaxspeech.text import spm
  from tests.helpers.llasa import CODE_FEATURES, TEXT_VOCAB, derived_codes
  root = tmp_path_factory.mktemp("llasa_codes")
  texts = sentences.unique_sentences(176, seed=0)
  model_path = str(root / "spm.model")
  spm.train_bpe(texts, vocab_size=TEXT_VOCAB).save(model_path)

  def examples(part):
    return [{"codes": derived_codes(t), "text": t, "speaker": f"s{i % 4}"} for i, t in enumerate(part)]
  path = tfds_io.write_dataset(root / "codes" / "1.0.0", CODE_FEATURES,
                               {"train": examples(texts[:160]), "validation": examples(texts[160:])})
  return path, model_path
