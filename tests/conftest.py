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
