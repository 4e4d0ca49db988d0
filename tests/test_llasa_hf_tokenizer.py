"""The HF tokenizer of a Llasa workdir trained on our sentencepiece model (`jaxspeech convert llasa --to hf`):
`AutoTokenizer.from_pretrained` encodes every corpus transcript, odd text and the prompt string to the ids our
pipeline uses; the specials and `<|s_N|>` sit at our ids; and `AutoModelForCausalLM` + `generate(do_sample=False)`
on the prompt string reproduces jaxspeech's greedy tokens for the same text exactly."""

import dataclasses
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentencepiece
import torch
import transformers
from flax import nnx

from jaxspeech.convert import cli as convert_cli, mapping, workdir
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.data import tfds_io
from jaxspeech.data.synth import sentences
from jaxspeech.llasa import convert, family, generate, objective
from jaxspeech.llasa.model import Llama, LlamaConfig
from jaxspeech.llasa.vocab import SPECIAL_TOKENS, LlasaVocab, speech_token
from jaxspeech.text import hf_tokenizer, spm
from jaxspeech.workdir import Workdir
from tests.helpers import ROOT
from tests.helpers.llasa import CODES, TEXT_VOCAB, VOCAB

ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
ODD = ["", " ", "   ", "  leading spaces", "trailing spaces  ", "a  b   c", "Digits 0123456789, 3.14 and 1,000,000!",
       "punctuation?!;:'\"()[]{}-—…", "unicode: café naïve Ωmega 東京 😀", "ﬁ ligature ① full-width ＡＢＣ",
       "\ttab\nnewline\r\n", "ALL CAPS", "<s> </s> <unk> <pad>", "▁x", "▁", " ▁ x", "x" * 300]


def prompt_string(text: str) -> str:
  """The prompt a user writes for `objective.prompt` of `text` (docs/llasa.md)."""
  return f"<|TEXT_UNDERSTANDING_START|>{text}<|TEXT_UNDERSTANDING_END|><|SPEECH_GENERATION_START|>"


def transcripts(corpus_path) -> list[str]:
  out = []
  for split in ("train", "validation", "test", "test_unseen"):
    source = tfds_io.data_source(corpus_path, split)
    out += [source[i]["text"].decode() for i in range(len(source))]
  return out


@pytest.fixture(scope="module")
def corpus(corpus_path, tmp_path_factory):
  """(transcripts, sentencepiece model path, HF dir, layout): the corpus's 256-piece model in the Llasa layout
  with 8 reserved ids and the 65,536 codes, as the export writes it."""
  texts = transcripts(corpus_path)
  root = tmp_path_factory.mktemp("corpus_tokenizer")
  spm.train_bpe(texts, vocab_size=256).save(root / "spm.model")
  vocab = LlasaVocab(text_vocab_size=264)
  os.makedirs(root / "hf")
  convert.write_tokenizer(str(root / "spm.model"), vocab, str(root / "hf"), "llasa.tokenizer")
  return texts, str(root / "spm.model"), str(root / "hf"), vocab


def test_every_transcript_and_odd_text_encodes_to_our_ids(corpus):
  texts, spm_path, hf_dir, vocab = corpus
  ours = spm.Tokenizer.load(spm_path)
  assert ours.vocab_size == 256
  hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
  assert len(hf) == vocab.size
  for text in texts + ODD:
    ids = ours.encode(text)
    assert hf(text)["input_ids"] == ids, text
    assert hf(prompt_string(text))["input_ids"] == objective.prompt(vocab, ids).tolist(), text
  assert hf.decode(ours.encode(texts[0])) == texts[0]


def test_voice_prompt_string_gives_the_voice_prompt_ids(corpus):
  """Reference transcript + " " + text in one span encodes as `objective.prompt`'s concatenated ids."""
  texts, spm_path, hf_dir, vocab = corpus
  ours, hf = spm.Tokenizer.load(spm_path), transformers.AutoTokenizer.from_pretrained(hf_dir)
  ref_codes = [0, 17, 65_535]
  for ref, text in zip(texts[:200], texts[1:201]):
    expected = objective.prompt(vocab, ours.encode(text), ours.encode(ref), ref_codes).tolist()
    assert hf(prompt_string(f"{ref} {text}") + "".join(map(speech_token, ref_codes)))["input_ids"] == expected


def test_specials_codes_and_reserved_ids_are_ours(corpus):
  _, _, hf_dir, vocab = corpus
  hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
  assert hf.convert_tokens_to_ids(vocab.added_tokens()) == list(range(vocab.special_start, vocab.size))
  assert [hf.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [vocab.special(t) for t in SPECIAL_TOKENS]
  assert hf.convert_ids_to_tokens([256, 263]) == [hf_tokenizer.reserved_token(256), hf_tokenizer.reserved_token(263)]
  assert hf.eos_token_id == hf.pad_token_id == vocab.special("SPEECH_GENERATION_END") and hf.bos_token is None
  ids = [vocab.special("SPEECH_GENERATION_START"), *vocab.codes_to_ids([5, 65_535]), vocab.special("SPEECH_GENERATION_END")]
  assert hf.decode(ids, skip_special_tokens=True) == "<|s_5|><|s_65535|>"  # the codes are plain tokens, specials not
  with open(os.path.join(hf_dir, "generation_config.json")) as f:
    assert json.load(f) == {"eos_token_id": vocab.special("SPEECH_GENERATION_END"),
                            "pad_token_id": vocab.special("SPEECH_GENERATION_END"), "do_sample": True,
                            "temperature": 0.8, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.2}


def test_unsupported_sentencepiece_models_are_refused(corpus):
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(corpus[0]), model_writer=model, vocab_size=400,
                                           model_type="unigram", byte_fallback=True, minloglevel=2)
  with pytest.raises(ConversionError) as error:
    hf_tokenizer.from_sentencepiece(model.getvalue())
  assert "only BPE" in str(error.value.problems) and "byte_fallback=True" in str(error.value.problems)


@pytest.fixture(scope="module")
def random_workdir(tmp_path_factory, code_data):
  """A random-init tiny Llasa workdir (64 codes) whose config.json has the trainer's `llasa` section."""
  path = str(tmp_path_factory.mktemp("random") / "wd")
  cfg = LlamaConfig(vocab_size=VOCAB.size, hidden=32, layers=1, heads=2, kv_heads=1, head_dim=16, mlp=64)
  params = mapping.flatten(nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(0)), nnx.Param)))
  workdir.write(path, "llasa", workdir.Imported(model=dataclasses.asdict(cfg), params=params), {})
  llasa = {"tokenizer": code_data[1], "text_vocab_size": TEXT_VOCAB, "num_speech_tokens": CODES}
  Workdir(path).write_config({**Workdir(path).config, "llasa": llasa})
  return path


def export(capsys, src, dst, *flags) -> tuple[int, str, str]:
  capsys.readouterr()
  code = convert_cli.run("llasa", ["--to", "hf", "--src", str(src), "--dst", str(dst), *map(str, flags)])
  out = capsys.readouterr()
  return code, out.out, out.err


def test_export_refuses_a_tokenizer_it_cannot_lay_out(random_workdir, code_data, corpus, tmp_path, capsys):
  code, _, err = export(capsys, random_workdir, tmp_path / "a", "--tokenizer", corpus[1] + ".missing")
  assert code == 2 and "--tokenizer=" in err and "no such file" in err
  big = tmp_path / "big.model"
  spm.train_bpe(corpus[0], vocab_size=400).save(big)
  code, _, err = export(capsys, random_workdir, tmp_path / "b", "--tokenizer", big)
  assert code == 2 and f"has {spm.Tokenizer.load(big).vocab_size} pieces, more than llasa.text_vocab_size=256" in err
  config = Workdir(random_workdir).config
  Workdir(random_workdir).write_config({**config, "llasa": {**config["llasa"], "num_speech_tokens": 65_536}})
  try:
    code, _, err = export(capsys, random_workdir, tmp_path / "c")
  finally:
    Workdir(random_workdir).write_config(config)
  assert code == 2 and "is 65800 ids, but model.vocab_size=328" in err
  assert not [p for p in os.listdir(tmp_path) if p in ("a", "b", "c") or ".converting" in p]


def test_export_converts_the_workdir_sentencepiece_model_by_default(random_workdir, code_data, tmp_path, capsys):
  code, out, err = export(capsys, random_workdir, tmp_path / "hf")
  assert code == 0, err
  assert f"tokenizer of {code_data[1]} (llasa.tokenizer), in the Llasa id layout" in out
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert len(hf) == VOCAB.size and hf.convert_tokens_to_ids(speech_token(CODES - 1)) == VOCAB.size - 1


def test_tokenizer_dir_is_copied(random_workdir, corpus, tmp_path, capsys):
  code, out, err = export(capsys, random_workdir, tmp_path / "hf", "--tokenizer", corpus[2])
  assert code == 0, err
  assert f"tokenizer files from {corpus[2]}: tokenizer.json, tokenizer_config.json, special_tokens_map.json" in out
  with open(tmp_path / "hf" / "tokenizer.json") as f, open(os.path.join(corpus[2], "tokenizer.json")) as g:
    assert f.read() == g.read()


@pytest.fixture(scope="module")
def exported(code_data, tmp_path_factory):
  """(workdir, HF dir): `jaxspeech train` 8 steps of the tiny config on the code dataset, exported by the CLI."""
  path, tokenizer = code_data
  root = tmp_path_factory.mktemp("trained")
  train = [sys.executable, "-m", "jaxspeech.cli", "train", "--config=configs/llasa.py:tiny", f"--workdir={root / 'wd'}",
           f"--config.data.path={path}", f"--config.llasa.tokenizer={tokenizer}",
           f"--config.llasa.text_vocab_size={TEXT_VOCAB}", f"--config.llasa.num_speech_tokens={CODES}",
           f"--config.model.vocab_size={VOCAB.size}", "--config.llasa.seq_len=256", "--config.train.steps=8",
           "--config.train.eval_every=0", "--config.train.checkpoint_every=8"]
  export_cmd = [sys.executable, "-m", "jaxspeech.cli", "convert", "llasa", "--to", "hf", "--src", str(root / "wd"),
                "--dst", str(root / "hf")]
  for cmd in (train, export_cmd):
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
  return str(root / "wd"), str(root / "hf")


@pytest.mark.slow
@pytest.mark.parametrize("penalty", [None, 1.0])
def test_hf_generate_reproduces_our_greedy_tokens(exported, code_data, penalty):
  """Greedy decoding of the prompt string in HF (`penalty` None: generation_config.json's 1.2, jaxspeech's default)
  gives jaxspeech's greedy tokens exactly, up to and including <|SPEECH_GENERATION_END|>."""
  wd, hf_dir = exported
  texts = sentences.unique_sentences(176, seed=0)[160:164] + ["Digits 42, and unicode: café!", ""]
  lm, _ = Workdir(wd).load_model(family.FAMILY)
  tokenizer = spm.Tokenizer.load(code_data[1])
  n = 120
  sampling = generate.Sampling(greedy=True, repetition_penalty=penalty or 1.2)
  tokens_BxN, lengths_B = generate.generate(lm, [objective.prompt(VOCAB, tokenizer.encode(t)) for t in texts],
                                            jax.random.PRNGKey(0), max_new_tokens=n,
                                            eos_id=VOCAB.special("SPEECH_GENERATION_END"), sampling=sampling)
  hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  extra = {} if penalty is None else {"repetition_penalty": penalty}
  outputs = []
  for text, ours, length in zip(texts, tokens_BxN, lengths_B):
    inputs = hf(prompt_string(text), return_tensors="pt")
    with torch.no_grad():
      new = model.generate(**inputs, do_sample=False, max_new_tokens=n, **extra)[0, inputs["input_ids"].shape[1]:]
    assert new.tolist() == ours[:length].tolist(), text  # exact ids
    codes = [int(t[4:-2]) for t in hf.convert_ids_to_tokens(new) if t.startswith("<|s_")]
    assert codes == VOCAB.ids_to_codes(ours[:length]).tolist() and codes
    outputs.append(tuple(new.tolist()))
  assert len(set(outputs)) > 1  # the tokens depend on the text: a wrong text id would show
