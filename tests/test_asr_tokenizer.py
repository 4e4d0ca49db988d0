"""The HF tokenizer of `jaxspeech convert asr`. A ParakeetForCTC directory with the tokenizer files transformers'
NeMo converter writes (a NeMo-style sentencepiece BPE model through `ParakeetConverter`, `<pad>` after the pieces
as the blank) imports with its tokenizer: `text.HFTokenizer` decodes any CTC frames as `ParakeetTokenizer` and
`ParakeetProcessor` do, and `jaxspeech asr transcribe` prints what `ParakeetProcessor.batch_decode` of
`ParakeetForCTC.generate` gives. Every export (the imported tokenizer, a run's sentencepiece model, characters)
loads in `AutoTokenizer`, `AutoProcessor` and the ASR pipeline, encodes as the workdir's tokenizer does, and
transcribes as the workdir does."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece
import soundfile
import torch
import transformers
from tokenizers import AddedToken
from transformers.convert_slow_tokenizer import ParakeetConverter

from jaxspeech.asr import convert, family, hf_tokenizer, inference, text
from jaxspeech.asr.model import ASRConfig
from jaxspeech.audio import io as audio_io
from jaxspeech.convert import cli as convert_cli
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.data import tfds_io
from jaxspeech.text import spm
from tests.helpers import ROOT

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
CONFIG = ASRConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   subsampling_conv_channels=8)
CLIPS = 3


def save_model(directory, vocab_size: int, seed: int = 0) -> None:
  """A random ParakeetForCTC of `CONFIG`'s shape, every param perturbed so that its frames vary."""
  torch.manual_seed(seed)
  cfg = dict(convert.hf_config(CONFIG), vocab_size=vocab_size, pad_token_id=vocab_size - 1)
  model = transformers.ParakeetForCTC(transformers.ParakeetCTCConfig(**cfg))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.5 * torch.randn_like(p))
  model.save_pretrained(directory)


def save_nemo_tokenizer(texts: list[str], directory) -> transformers.ParakeetTokenizer:
  """A sentencepiece BPE model as NeMo trains one (<unk> at 0, no BOS, EOS or pad), written as
  transformers/models/parakeet/convert_nemo_to_hf.py's `write_processor` writes it for a CTC model."""
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=96, character_coverage=1.0,
      unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=1, shuffle_input_sentence=False,
      hard_vocab_limit=False, minloglevel=2)
  os.makedirs(directory)
  path = os.path.join(directory, "nemo_tokenizer.model")
  with open(path, "wb") as f:
    f.write(model.getvalue())
  tokenizer = transformers.ParakeetTokenizer(tokenizer_object=ParakeetConverter(path).converted(),
                                             clean_up_tokenization_spaces=False)
  os.remove(path)
  tokenizer.add_tokens([AddedToken("<pad>", normalized=False, special=True)])
  tokenizer.add_special_tokens({"pad_token": AddedToken("<pad>", normalized=False, special=True),
                                "unk_token": AddedToken("<unk>", normalized=False, special=True)})
  processor = transformers.ParakeetProcessor(feature_extractor=transformers.ParakeetFeatureExtractor(),
                                             tokenizer=tokenizer, decoder_type="ctc")
  processor.save_pretrained(directory)
  return tokenizer


def hf_transcripts(directory, wavs: list[np.ndarray]) -> list[str]:
  """Greedy CTC with transformers alone: AutoProcessor, AutoModelForCTC.generate, batch_decode."""
  processor = transformers.AutoProcessor.from_pretrained(directory)
  model = transformers.AutoModelForCTC.from_pretrained(directory).eval()
  with torch.no_grad():
    ids = model.generate(**processor(wavs, sampling_rate=family.SAMPLE_RATE))
  return processor.batch_decode(ids)


def pipeline_transcripts(directory, wavs: list[np.ndarray]) -> list[str]:
  pipe = transformers.pipeline("automatic-speech-recognition", model=str(directory))
  return [pipe({"raw": wav, "sampling_rate": family.SAMPLE_RATE})["text"] for wav in wavs]


def cli(*args) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, "-m", "jaxspeech.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def corpus(corpus_path, tmp_path_factory):
  """(transcripts of every split, wav files of `CLIPS` test recordings, those clips at 16 kHz)."""
  texts = [source[i]["text"].decode() for split in ("train", "validation", "test")
           for source in [tfds_io.data_source(corpus_path, split)] for i in range(len(source))]
  root = tmp_path_factory.mktemp("clips")
  source = tfds_io.data_source(corpus_path, "test")
  paths, wavs = [], []
  for i in range(CLIPS):
    path = str(root / f"clip{i}.wav")
    soundfile.write(path, source[i]["audio"], int(source[i]["sample_rate"]))
    wav, rate = soundfile.read(path, dtype="float32")
    paths.append(path)
    wavs.append(audio_io.resample(wav, rate, family.SAMPLE_RATE))
  return texts, paths, wavs


@pytest.fixture(scope="module")
def parakeet(corpus, tmp_path_factory):
  """(HF directory, its ParakeetTokenizer, the workdir `jaxspeech convert asr --from hf` made of it)."""
  root = tmp_path_factory.mktemp("parakeet")
  hf_dir = root / "hf"
  tokenizer = save_nemo_tokenizer(corpus[0], hf_dir)
  save_model(hf_dir, len(tokenizer))
  assert convert_cli.run("asr", ["--from", "hf", "--src", str(hf_dir), "--dst", str(root / "workdir")]) == 0
  return hf_dir, tokenizer, str(root / "workdir")


def test_the_tokenizer_is_laid_out_as_parakeet_repos_have_it(parakeet):
  hf_dir, tokenizer, workdir = parakeet
  layout = json.loads((hf_dir / "tokenizer.json").read_text())
  assert layout["model"]["type"] == "BPE" and layout["pre_tokenizer"]["type"] == "Metaspace"
  assert (tokenizer.unk_token_id, tokenizer.pad_token_id) == (0, len(tokenizer) - 1)
  assert sorted(os.listdir(workdir)) == sorted(["config.json", "convert.json", "checkpoints", "tokenizer.json",
                                                "tokenizer_config.json"])
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (hf_dir / name).read_bytes() == open(os.path.join(workdir, name), "rb").read()
  assert json.loads(open(os.path.join(workdir, "convert.json")).read())["files"] == ["tokenizer.json",
                                                                                    "tokenizer_config.json"]


def test_decodes_ctc_frames_as_parakeet_tokenizer_and_processor(parakeet):
  """Random frames over the whole vocabulary (the blank, <unk>, repeats): the collapsed ids decode to
  `ParakeetTokenizer.decode` and `ParakeetProcessor.batch_decode` of the frames."""
  hf_dir, tokenizer, workdir = parakeet
  ours = text.of_workdir(workdir)
  assert isinstance(ours, text.HFTokenizer) and ours.pad_id == tokenizer.pad_token_id
  processor = transformers.AutoProcessor.from_pretrained(hf_dir)
  blank = tokenizer.pad_token_id
  rng = np.random.default_rng(0)
  frames = np.repeat(rng.integers(0, blank + 1, (200, 20)), rng.integers(1, 4, 20), axis=1)
  frames[rng.random(frames.shape) < 0.4] = blank
  theirs = processor.batch_decode(torch.from_numpy(frames))
  assert theirs == [tokenizer.decode(row) for row in frames]
  assert [ours.decode(text.collapse(row, blank)) for row in frames] == theirs
  assert any("<unk>" in t for t in theirs)


@pytest.mark.slow
def test_transcribe_prints_what_transformers_decodes(parakeet, corpus):
  hf_dir, _, workdir = parakeet
  _, paths, wavs = corpus
  printed = [line.split("\t", 1) for line in cli("asr", "transcribe", "--asr", workdir, *paths).stdout.splitlines()]
  assert printed == [[p, t] for p, t in zip(paths, hf_transcripts(hf_dir, wavs))]
  # on these clips the pipeline decodes no frame past the output lengths (at some lengths it decodes one more)
  assert [t for _, t in printed] == pipeline_transcripts(hf_dir, wavs)
  assert len(set("".join(t for _, t in printed))) > 10


def test_import_refuses_a_tokenizer_that_would_decode_otherwise(parakeet, tmp_path):
  hf_dir, _, _ = parakeet
  for name in text.HF_FILES[:2]:
    shutil.copy(hf_dir / name, tmp_path / name)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<unk>"}))
  with pytest.raises(ConversionError, match=r"pad_token='<unk>' \(id 0\) is not the blank"):
    hf_tokenizer.read(str(tmp_path), CONFIG)
  os.remove(tmp_path / "tokenizer.json")
  assert hf_tokenizer.read(str(tmp_path), CONFIG)[0] == {}


def export(workdir: str, dst) -> list[str]:
  assert convert_cli.run("asr", ["--to", "hf", "--src", workdir, "--dst", str(dst)]) == 0
  return sorted(os.listdir(dst))


@pytest.mark.slow
def test_export_carries_the_imported_tokenizer(parakeet, corpus, tmp_path):
  hf_dir, _, workdir = parakeet
  wavs = corpus[2]
  assert export(workdir, tmp_path / "out") == ["config.json", "model.safetensors", "processor_config.json",
                                               "tokenizer.json", "tokenizer_config.json"]
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (tmp_path / "out" / name).read_bytes() == (hf_dir / name).read_bytes()
  assert hf_transcripts(tmp_path / "out", wavs) == hf_transcripts(hf_dir, wavs)
  assert pipeline_transcripts(tmp_path / "out", wavs) == pipeline_transcripts(hf_dir, wavs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sentencepiece", "characters"])
def test_export_writes_the_workdirs_tokenizer(kind, corpus, tmp_path):
  """A workdir that spells its transcripts with a sentencepiece model (`jaxspeech text train`, copied into the
  workdir as a run copies it) or characters: the export's AutoTokenizer encodes the corpus as the workdir's
  tokenizer does, and transformers transcribes the export as `Recognizer` does the workdir."""
  texts, _, wavs = corpus
  if kind == "sentencepiece":
    ours = spm.train_bpe(texts, vocab_size=128)
  else:
    ours = text.Characters()
  save_model(tmp_path / "model", ours.vocab_size + 1, seed=1)
  workdir = str(tmp_path / "workdir")
  assert convert_cli.run("asr", ["--from", "hf", "--src", str(tmp_path / "model"), "--dst", workdir]) == 0
  if kind == "sentencepiece":
    ours.save(text.in_workdir(workdir))
  assert export(workdir, tmp_path / "out") == ["config.json", "model.safetensors", "processor_config.json",
                                               "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert isinstance(tokenizer, transformers.ParakeetTokenizer) and tokenizer.pad_token_id == ours.vocab_size
  assert tokenizer(texts, add_special_tokens=False)["input_ids"] == [ours.encode(t) for t in texts]
  transcripts = inference.Recognizer(workdir).transcribe(wavs, family.SAMPLE_RATE)
  assert hf_transcripts(tmp_path / "out", wavs) == transcripts and len(set("".join(transcripts))) > 2
  assert len(pipeline_transcripts(tmp_path / "out", wavs)) == CLIPS


def test_a_checkpoint_without_a_tokenizer_imports_and_exports_with_a_note(tmp_path, capsys):
  save_model(tmp_path / "model", 40)
  workdir = str(tmp_path / "workdir")
  assert convert_cli.run("asr", ["--from", "hf", "--src", str(tmp_path / "model"), "--dst", workdir]) == 0
  assert "has no tokenizer.json" in capsys.readouterr().err
  assert export(workdir, tmp_path / "out") == ["config.json", "model.safetensors"]
  assert "no tokenizer" in capsys.readouterr().out
