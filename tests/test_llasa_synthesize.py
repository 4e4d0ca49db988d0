"""Synthesis: verifiers and best-of-N, text → codes → wav with a voice prompt, and `jaxspeech llasa synthesize`."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile
from flax import nnx

from jaxspeech.codec import sizes as codec_sizes
from jaxspeech.codec.model import Codec
from jaxspeech.convert import mapping, workdir
from jaxspeech.data.synth import sentences
from jaxspeech.llasa import generate, synthesis, verify
from jaxspeech.llasa.model import Llama, LlamaConfig
from jaxspeech.text import spm
from jaxspeech.llasa.vocab import LlasaVocab
from tests.helpers import ROOT

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
VOCAB = LlasaVocab(text_vocab_size=128)  # the codec's 65,536 codes
LM = LlamaConfig(vocab_size=VOCAB.size, hidden=32, layers=1, heads=2, kv_heads=1, head_dim=16, mlp=64)


def test_length_repetition_prefers_plausible_speech():
  verifier = verify.LengthRepetition(seconds_per_char=0.1)
  text = "x" * 20  # 2 s expected: 100 codes
  rng = np.random.default_rng(0)
  right = verify.Candidate(text, rng.integers(0, 1000, 100))
  short = verify.Candidate(text, rng.integers(0, 1000, 20))
  looping = verify.Candidate(text, np.tile([1, 2, 3, 4, 5], 20))
  assert verifier(right) == pytest.approx(0.0, abs=1e-9)
  assert verifier(short) == pytest.approx(-np.log(5))
  assert verifier(looping) < -0.9
  assert verifier(verify.Candidate(text, np.zeros(0, int))) == -np.inf


def test_best_of_n_sums_weighted_scores_and_picks_the_best():
  def spectrum(wav):  # a real embedding for the test: the clip's magnitude spectrum
    return np.abs(np.fft.rfft(wav, 256))

  t = np.arange(4000) / 16000
  reference = np.sin(2 * np.pi * 440 * t)
  similar, other = np.sin(2 * np.pi * 445 * t), np.sin(2 * np.pi * 3000 * t)
  speaker = verify.SpeakerSimilarity(spectrum, reference)
  candidates = [verify.Candidate("ab", np.arange(10), wav) for wav in (other, similar)]
  chosen, scores = verify.best_of_n(candidates, [speaker, verify.LengthRepetition()], weights=[10.0, 1.0])
  assert chosen == 1 and scores[1]["speaker_similarity"] > scores[0]["speaker_similarity"]
  assert scores[0]["total"] == pytest.approx(10 * scores[0]["speaker_similarity"] + scores[0]["length_repetition"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("spm") / "spm.model")
  spm.train_bpe(sentences.unique_sentences(100, seed=1), vocab_size=VOCAB.text_vocab_size).save(path)
  return path


@pytest.mark.slow
def test_voice_prompted_best_of_n_synthesis(tokenizer):
  lm = Llama(LM, nnx.Rngs(0))
  codec = Codec(codec_sizes.tiny(), rngs=nnx.Rngs(1))
  ref_wav = np.sin(2 * np.pi * 200 * np.arange(3200) / 16000).astype(np.float32)
  result = synthesis.synthesize(lm, codec, spm.Tokenizer.load(tokenizer), VOCAB, "a short test.",
                                jax.random.PRNGKey(0), ref_wav=ref_wav, ref_text="the reference.", max_seconds=0.2,
                                best_of=3, sampling=generate.Sampling(top_k=50))
  assert len(result.scores) == 3 and 0 <= result.chosen < 3
  assert 0 < len(result.codes) <= 10 and len(result.wav) == 320 * len(result.codes)


@pytest.mark.slow
def test_streamed_synthesis_is_synthesis_chunk_by_chunk(tokenizer):
  """One chunk without left context is the whole decode of the generated codes; small chunks come out as the
  LM writes them, with the reference clip's codes as their left context."""
  lm = Llama(LM, nnx.Rngs(0))
  codec = Codec(codec_sizes.tiny(), rngs=nnx.Rngs(1))
  ref_wav = np.sin(2 * np.pi * 200 * np.arange(3200) / 16000).astype(np.float32)
  args = (lm, codec, spm.Tokenizer.load(tokenizer), VOCAB, "a short test.", jax.random.PRNGKey(0))
  kwargs = dict(ref_wav=ref_wav, ref_text="the reference.", max_seconds=0.4, sampling=generate.Sampling(top_k=50))
  whole = synthesis.synthesize(*args, **kwargs)
  assert len(whole.codes) > 5
  one = list(synthesis.stream(*args, **kwargs, chunk=1000, left=0, lookahead=0))
  assert len(one) == 1
  np.testing.assert_allclose(one[0], whole.wav, atol=1e-5)
  pieces = list(synthesis.stream(*args, **kwargs, tokens_per_step=3, chunk=4, left=8, lookahead=1))
  assert [len(p) for p in pieces[:-1]] == [4 * 320] * (len(pieces) - 1)
  assert sum(len(p) for p in pieces) == len(whole.wav)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """(LM workdir, codec workdir) of random-init tiny models, as `jaxspeech convert` writes them."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from jaxspeech.train import registry  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("workdirs")
  lm = Llama(LM, nnx.Rngs(0))
  workdir.write(str(root / "lm"), "llasa", workdir.Imported(
      model=dataclasses.asdict(LM), params=mapping.flatten(nnx.to_pure_dict(nnx.state(lm, nnx.Param)))), {})
  codec_model = dataclasses.asdict(codec_sizes.tiny())
  codec = registry.get("codec").build_model(workdir.train_config("codec", codec_model), nnx.Rngs(1))
  workdir.write(str(root / "codec"), "codec", workdir.Imported(
      model=codec_model, params=mapping.flatten(nnx.to_pure_dict(nnx.state(codec, nnx.Param)))), {})
  return str(root / "lm"), str(root / "codec")


@pytest.mark.slow
def test_synthesize_cli(tokenizer, workdirs, tmp_path):
  """`jaxspeech llasa synthesize` as a user runs it, on an LM and a codec workdir (random weights)."""
  soundfile.write(tmp_path / "ref.wav", 0.3 * np.sin(2 * np.pi * 220 * np.arange(4000) / 8000), 8000)
  result = subprocess.run(
      [sys.executable, "-m", "jaxspeech.cli", "llasa", "synthesize", "--lm", workdirs[0], "--codec", workdirs[1], "--tokenizer",
       tokenizer, "--num-speech-tokens", "65536", "--text", "hello there.",
       "--ref-audio", str(tmp_path / "ref.wav"), "--ref-text", "a reference.", "--best-of", "2",
       "--max-seconds", "0.2", "--out", str(tmp_path / "out.wav")],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  wav, rate = soundfile.read(tmp_path / "out.wav")
  assert rate == 16000 and 0 < len(wav) <= 320 * 10
  assert "candidate" in result.stdout


@pytest.mark.slow
def test_synthesize_cli_streams(tokenizer, workdirs, tmp_path):
  base = [sys.executable, "-m", "jaxspeech.cli", "llasa", "synthesize", "--lm", workdirs[0], "--codec", workdirs[1],
          "--tokenizer", tokenizer, "--text", "hello there.", "--max-seconds", "0.3", "--out", str(tmp_path / "s.wav"),
          "--stream", "--stream-chunk", "4", "--stream-left", "8"]
  result = subprocess.run(base, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "streamed" in result.stdout
  wav, rate = soundfile.read(tmp_path / "s.wav")
  assert rate == 16000 and len(wav) % 320 == 0 and len(wav) <= 320 * 15
  refused = subprocess.run(base + ["--best-of", "2"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
  assert refused.returncode == 2 and "does not take --best-of" in refused.stderr


def test_synthesize_cli_names_missing_flags_and_keeps_the_old_spelling_with_a_notice(tmp_path):
  """`jaxspeech synthesize --lm` (the previous release's spelling) runs `jaxspeech llasa synthesize`."""
  result = subprocess.run([sys.executable, "-m", "jaxspeech.cli", "synthesize", "--lm", str(tmp_path), "--text", "x",
                           "--out", str(tmp_path / "o.wav")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2 and "llasa synthesize needs --codec and --tokenizer" in result.stderr
  assert "note: `jaxspeech synthesize --lm` is now `jaxspeech llasa synthesize`" in result.stderr


def test_chunkwise_beam_search_keeps_the_verifiers_best(tokenizer):
  """A verifier that prefers large codes: every kept prefix is the best-scoring of its round, so the result
  beats the median of plain sampling of the same length."""
  class LargeCodes:
    name = "large_codes"

    def __call__(self, candidate):
      return float(np.mean(candidate.codes)) if len(candidate.codes) else 0.0

  lm = Llama(LM, nnx.Rngs(0))
  tok = spm.Tokenizer.load(tokenizer)
  sampling = generate.Sampling(temperature=1.5, repetition_penalty=1.0)
  result = synthesis.beam_search(lm, None, tok, VOCAB, "a test.", jax.random.PRNGKey(0), verifiers=[LargeCodes()],
                                 beams=2, expand=4, chunk_seconds=0.1, max_seconds=0.3, sampling=sampling)
  assert len(result.codes) == 15 and result.wav is None
  plain = generate.synthesize_codes(lm, VOCAB, [tok.encode("a test.")] * 8, jax.random.PRNGKey(1), max_new_tokens=15,
                                    sampling=sampling)
  assert np.mean(result.codes) > np.median([np.mean(c) for c in plain])


@pytest.mark.slow
def test_evaluation_against_the_corpus_recordings(tokenizer, corpus_path):
  from jaxspeech.llasa import evaluate  # pylint: disable=import-outside-toplevel
  lm = Llama(LM, nnx.Rngs(0))
  codec = Codec(codec_sizes.tiny(), rngs=nnx.Rngs(1))
  scores = evaluate.evaluate_synthesis(lm, codec, spm.Tokenizer.load(tokenizer), VOCAB, corpus_path, "validation",
                                       jax.random.PRNGKey(0), count=2, max_seconds=0.2,
                                       embed=lambda wav: np.abs(np.fft.rfft(wav, 512)))
  assert set(scores) == {"mcd_dtw", "duration_ratio", "speaker_similarity"}
  assert scores["mcd_dtw"] > 0 and 0 < scores["duration_ratio"] < 1  # ≤ 0.2 s against whole sentences
  assert 0 <= scores["speaker_similarity"] <= 1


@pytest.mark.slow
def test_llasa_eval_cli(tokenizer, workdirs, corpus_path, tmp_path, capsys):
  """`jaxspeech llasa eval` on held-out sentences: a table, a JSON of every utterance, the audio; and
  `--resynthesis`, whose codec round trip keeps each recording's length to within one code (320 samples)."""
  from jaxspeech import cli  # pylint: disable=import-outside-toplevel
  data = ["--codec", workdirs[1], "--data-dir", corpus_path, "--split", "test"]
  assert cli.main(["llasa", "eval", "--lm", workdirs[0], "--tokenizer", tokenizer, *data, "--limit", "2",
                   "--max-seconds", "0.2", "--out", str(tmp_path / "lm.json"), "--wav-dir", str(tmp_path / "wavs")]) == 0
  with open(tmp_path / "lm.json") as f:
    result = json.load(f)
  rows = result["utterances"]
  assert [r["index"] for r in rows] == [0, 1] and result["settings"]["split"] == "test"
  assert all(r["mcd_dtw"] > 0 and 0 < r["duration_ratio"] < 1 and r["seconds"] <= 0.2 for r in rows)
  assert result["means"]["mcd_dtw"] == pytest.approx(np.mean([r["mcd_dtw"] for r in rows]), rel=1e-12)
  wav, rate = soundfile.read(tmp_path / "wavs" / "test_001.wav")
  assert rate == 16000 and len(wav) == round(rows[1]["seconds"] * rate)
  table = capsys.readouterr().out
  assert table.splitlines()[0].split()[:4] == ["#", "speaker", "truth", "s"]
  assert rows[0]["speaker"] in table and "mean" in table

  assert cli.main(["llasa", "eval", "--resynthesis", *data, "--limit", "1", "--out", str(tmp_path / "codec.json")]) == 0
  with open(tmp_path / "codec.json") as f:
    rows = json.load(f)["utterances"]
  assert all(abs(r["seconds"] - r["truth_seconds"]) < 320 / 16000 and r["mcd_dtw"] > 0 for r in rows)


def test_llasa_eval_names_missing_flags(tmp_path, capsys):
  from jaxspeech import cli  # pylint: disable=import-outside-toplevel
  assert cli.main(["llasa", "eval", "--lm", str(tmp_path)]) == 2
  assert "llasa eval needs --codec and --tokenizer" in capsys.readouterr().err
