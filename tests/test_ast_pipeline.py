"""`jaxspeech convert ast --to hf` gives a directory `transformers.pipeline("audio-classification")` runs: the
feature extractor of our fbank (preprocessor_config.json) and the speaker names of the run's dataset as labels.
The pipeline's top label and probabilities on a corpus utterance are compared with our own eval path
(`Workdir.load_model` and the family's `fbank`) on the same 16 kHz waveform.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import transformers

from jaxspeech.ast import convert
from jaxspeech.ast import family as ast_family
from jaxspeech.ast.family import FAMILY
from jaxspeech.convert import cli as convert_cli
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.data import pipeline, tfds_io
from jaxspeech.train import trainer
from jaxspeech.workdir import Workdir
from tests.helpers import ROOT, tiny_ast
from tests.helpers.ast import hf_model, run_inprocess

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
# pipeline probabilities vs ours: HF's numpy fbank against ours, both models in float32; measured <= 1e-7
PROB_ATOL = 1e-5
UTTERANCES = 3


def speaker_names(corpus_path) -> list[str]:
  return [s["name"] for s in tfds_io.metadata(corpus_path)["speakers"]]


def utterances(corpus_path, count: int = UTTERANCES) -> list[tuple[np.ndarray, int]]:
  """(16 kHz float32 waveform, speaker_id) of the first `count` test utterances, decoded as the family decodes."""
  source = tfds_io.data_source(corpus_path, "test")
  decode = pipeline.DecodeSpeech(ast_family.SAMPLE_RATE)
  out = []
  for i in range(count):
    example = decode(source[i], np.random.default_rng(0))
    out.append((example["audio"], int(example["speaker_id"])))
  return out


def our_probabilities(model, cfg, wav_S: np.ndarray) -> np.ndarray:
  """Softmax of our classifier's logits, the family's eval path: Kaldi fbank on the device, then the model."""
  batch = {"audio": wav_S[None], "audio_lengths": np.array([len(wav_S)], np.int32)}
  return np.asarray(jax.nn.softmax(model(ast_family.fbank(batch, cfg))))[0]


# The pipeline runs in a fresh process, as a user runs it: in this one, another test module's torchaudio stub
# (tests/reference_stubs.py) would make ASTFeatureExtractor call torchaudio.
PIPELINE = """
import json, sys
import numpy as np
import transformers
classifier = transformers.pipeline("audio-classification", model=sys.argv[1])
wavs = np.load(sys.argv[2])
print(json.dumps([{r["label"]: r["score"] for r in classifier(wavs[k], top_k=None)} for k in wavs.files]))
"""


def pipeline_scores(exported, wavs: list[np.ndarray], tmp_path) -> list[dict[str, float]]:
  """{label: probability} of `transformers.pipeline("audio-classification", model=exported)` for each waveform."""
  np.savez(tmp_path / "wavs.npz", *wavs)
  result = subprocess.run([sys.executable, "-c", PIPELINE, str(exported), str(tmp_path / "wavs.npz")], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def assert_pipeline_matches_ours(workdir, exported, corpus_path, tmp_path) -> None:
  names = speaker_names(corpus_path)
  examples = utterances(corpus_path)
  model, cfg = Workdir(str(workdir)).load_model(FAMILY)
  for (wav_S, _), scores in zip(examples, pipeline_scores(exported, [w for w, _ in examples], tmp_path),
                                strict=True):
    assert sorted(scores) == sorted(names)
    theirs = np.array([scores[name] for name in names])
    ours = our_probabilities(model, cfg, wav_S)
    assert np.argmax(theirs) == np.argmax(ours)
    np.testing.assert_allclose(theirs, ours, atol=PROB_ATOL, rtol=0)


def export_cli(src, dst, *extra) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxspeech.cli", "convert", "ast", "--to", "hf", "--src", str(src),
                         "--dst", str(dst), *map(str, extra)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=240)


@pytest.fixture(scope="module")
def random_workdir(tmp_path_factory, corpus_path):
  """A random-init classifier over the corpus's 16 speakers (imported from HF), whose config names the corpus."""
  root = tmp_path_factory.mktemp("ast_pipeline")
  hf = hf_model(num_labels=16, num_mel_bins=128, max_length=64)
  hf.save_pretrained(root / "hf")
  workdir = root / "workdir"
  assert convert_cli.run("ast", ["--from", "hf", "--src", str(root / "hf"), "--dst", str(workdir)]) == 0
  config = Workdir(str(workdir)).config
  Workdir(str(workdir)).write_config({**config, "data": {"path": str(corpus_path)}})
  return workdir


def on_dataset(workdir, tmp_path, features) -> str:
  """A workdir with `workdir`'s checkpoints whose config names a one-example dataset of `features`."""
  data = tfds_io.write_dataset(tmp_path / "labelled" / "1.0.0", features,
                               {"train": [{"audio": np.zeros(8, np.int16), "speaker_id": 1}]})
  other = tmp_path / "workdir"
  other.mkdir()
  os.symlink(os.path.join(workdir, "checkpoints"), other / "checkpoints")
  Workdir(str(other)).write_config({**Workdir(str(workdir)).config, "data": {"path": data}})
  return str(other)


def speaker_ids(**classlabel) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                                     "speaker_id": tfds.features.ClassLabel(**classlabel)})


@pytest.mark.slow  # ~40 s on 2 cores: the pipeline's process imports torch and transformers
def test_random_init_export_runs_in_the_pipeline_with_the_corpus_speakers(random_workdir, corpus_path, tmp_path,
                                                                          capsys):
  code, out, err = run_inprocess(capsys, "--to", "hf", "--src", random_workdir, "--dst", tmp_path / "hf")
  assert code == 0, err
  assert "16 labels from the speakers of" in out
  extractor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
  assert extractor["sampling_rate"] == 16000 and extractor["num_mel_bins"] == 128 and extractor["max_length"] == 64
  config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
  assert [config.id2label[i] for i in range(16)] == speaker_names(corpus_path)
  assert_pipeline_matches_ours(random_workdir, tmp_path / "hf", corpus_path, tmp_path)


def test_labels_flag_overrides_the_dataset(random_workdir, tmp_path, capsys):
  (tmp_path / "labels.txt").write_text("".join(f"class{i}\n" for i in range(16)))
  code, _, err = run_inprocess(capsys, "--to", "hf", "--src", random_workdir, "--dst", tmp_path / "hf",
                               "--labels", tmp_path / "labels.txt")
  assert code == 0, err
  config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
  assert config.id2label[3] == "class3" and config.label2id["class15"] == 15


def test_classlabel_names_are_the_labels(random_workdir, tmp_path, capsys):
  names = [f"spk{i}" for i in range(12)]
  workdir = on_dataset(random_workdir, tmp_path, speaker_ids(names=names))
  code, out, err = run_inprocess(capsys, "--to", "hf", "--src", workdir, "--dst", tmp_path / "hf")
  assert code == 0, err
  assert "speaker_id ClassLabel" in out
  config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
  # the model's 4 classes beyond the dataset's 12 never had an example
  assert [config.id2label[i] for i in range(16)] == names + [f"LABEL_{i}" for i in range(12, 16)]


def test_more_dataset_labels_than_classes_is_refused(random_workdir, tmp_path, capsys):
  workdir = on_dataset(random_workdir, tmp_path, speaker_ids(num_classes=20))
  code, _, err = run_inprocess(capsys, "--to", "hf", "--src", workdir, "--dst", tmp_path / "hf")
  assert code == 2 and "more than the model's 16 classes" in err
  assert not os.path.exists(tmp_path / "hf")


@pytest.mark.parametrize("field, value", [("sampling_rate", 22050), ("frame_shift_ms", 12.5), ("window_type", "povey")])
def test_features_the_extractor_cannot_compute_are_refused(field, value):
  settings = convert.feature_settings(convert.ASTConfig(num_mel_bins=64, max_frames=100))
  assert convert.preprocessor_config(settings)["num_mel_bins"] == 64
  with pytest.raises(ConversionError) as info:
    convert.preprocessor_config({**settings, field: value})
  assert len(info.value.problems) == 1 and info.value.problems[0].startswith(f"{field}=")


@pytest.mark.slow
def test_trained_classifier_through_the_cli_and_the_pipeline(corpus_path, tmp_path):
  cfg = tiny_ast(corpus_path, steps=40, checkpoint_every=40)
  cfg.optim.lr = 3e-3
  trainer.Trainer(cfg, str(tmp_path / "workdir")).train()
  result = export_cli(tmp_path / "workdir", tmp_path / "hf")
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(tmp_path / "hf" / "preprocessor_config.json")
  assert_pipeline_matches_ours(tmp_path / "workdir", tmp_path / "hf", corpus_path, tmp_path)
