"""`jaxspeech convert dit --to f5 --dst DIR` gives what f5-tts' own `load_model` reads: the checkpoint, the
run's vocabulary as vocab.txt and an F5 config yaml. A random-init tiny DiT over the corpus's vocabulary (a run's
256-row embedding, its 50-odd characters) is exported, loaded by `load_model` as F5's infer_cli does (backbone,
arch and mel_spec_type from the yaml), and its transformer and a few-step Euler `CFM.sample` compared with ours.

`infer_process` does not run here: it reads the reference audio with `torchaudio.load` (torchaudio does not
import beside this torch) and needs a Vocos vocoder, which `load_vocoder` downloads from the hub.
"""

import dataclasses
import os

import numpy as np
import pytest
import safetensors.numpy
import torch
import yaml

from jaxspeech.convert import cli as convert_cli
from jaxspeech.convert import workdir as convert_workdir
from jaxspeech.data import tfds_io
from jaxspeech.dit import convert, sample, vocab
from jaxspeech.dit.family import FAMILY
from jaxspeech.dit.model import DiTConfig
from jaxspeech.workdir import Workdir
from tests import reference_stubs
from tests.helpers import dit as ref

CFG = DiTConfig(dim=48, depth=2, heads=3, dim_head=16, ff_mult=2, mel_dim=100, text_num_embeds=256, text_dim=32,
                conv_layers=1)
FLOW_ATOL = 1e-5    # transformer output (|out| ~1.5), float32 on CPU; measured 9e-7
SAMPLE_ATOL = 1e-4  # 4-step Euler mel (|mel| ~5), as tests/test_dit_sample.py; measured 3e-6
SEED = 7


def utils_infer():
  reference_stubs.stub_modules("pydub", "vocos", "matplotlib")
  from f5_tts.infer import utils_infer as module  # pylint: disable=import-outside-toplevel
  return module


def f5_load(directory):
  """F5's CFM as its infer_cli builds it from `--model_cfg DIR/model.yaml --ckpt_file ... --vocab_file ...`."""
  import f5_tts.model  # pylint: disable=import-outside-toplevel
  from omegaconf import OmegaConf  # pylint: disable=import-outside-toplevel
  model_cfg = OmegaConf.load(os.path.join(directory, "model.yaml"))
  return utils_infer().load_model(
      getattr(f5_tts.model, model_cfg.model.backbone), model_cfg.model.arch,
      os.path.join(directory, "model.safetensors"), mel_spec_type=model_cfg.model.mel_spec.mel_spec_type,
      vocab_file=os.path.join(directory, "vocab.txt"), device="cpu")


def make_workdir(path, cfg: DiTConfig, tokens: list[str], seed: int = 0) -> dict[str, np.ndarray]:
  """A dit workdir holding noisy random params (F5 zero-inits its output layers) and a run's vocab_char.txt."""
  params = convert.from_f5_state_dict(ref.f5_backbone(cfg, seed).state_dict(), cfg)
  model = {**dataclasses.asdict(cfg), "vocab_file": ""}
  convert_workdir.write(str(path), "dit", convert_workdir.Imported(model=model, params=params), {"from": "test"})
  vocab.write(vocab.in_workdir(str(path)), tokens)
  return params


def export(capsys, src, dst) -> tuple[int, str]:
  code = convert_cli.run("dit", ["--to", "f5", "--src", str(src), "--dst", str(dst)])
  out = capsys.readouterr()
  return code, out.out + out.err


@pytest.fixture(scope="module")
def corpus_tokens(corpus_path) -> list[str]:
  return vocab.of_dataset(corpus_path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, corpus_tokens):
  root = tmp_path_factory.mktemp("dit_f5")
  make_workdir(root / "wd", CFG, corpus_tokens)
  assert convert_cli.run("dit", ["--to", "f5", "--src", str(root / "wd"), "--dst", str(root / "f5")]) == 0
  ours, _ = Workdir(str(root / "wd")).load_model(FAMILY)
  return root / "f5", ours, f5_load(root / "f5")


def test_directory_holds_the_vocab_and_f5s_config(exported, corpus_tokens):
  directory, _, _ = exported
  assert (directory / "vocab.txt").read_text(encoding="utf-8") == "".join(t + "\n" for t in corpus_tokens)
  config = yaml.safe_load((directory / "model.yaml").read_text())["model"]
  assert config["backbone"] == "DiT" and config["tokenizer"] == "custom"
  assert config["tokenizer_path"] == os.path.join(directory, "vocab.txt")
  assert config["arch"]["dim"] == 48 and config["arch"]["pe_attn_head"] is None
  assert config["mel_spec"] == convert.F5_MEL


def test_load_model_reads_every_param(exported, corpus_tokens):
  directory, _, cfm = exported
  saved = safetensors.numpy.load_file(str(directory / "model.safetensors"))
  loaded = cfm.transformer.state_dict()
  assert loaded["text_embed.text_embed.weight"].shape[0] == len(corpus_tokens) + 1
  # load_state_dict is strict: a missing or unexpected key would have raised; every value is ours
  assert {f"ema_model.transformer.{k}" for k in loaded} == saved.keys() - {"initted", "step"}
  for key, value in loaded.items():
    np.testing.assert_array_equal(value.numpy(), saved[f"ema_model.transformer.{key}"], err_msg=key)
  assert cfm.vocab_char_map == {t: i for i, t in enumerate(corpus_tokens)}


def text_ids(texts: list[str], tokens: list[str], width: int) -> np.ndarray:
  ids = np.full((len(texts), width), -1, np.int64)
  for i, text in enumerate(texts):
    encoded = vocab.encode(text, tokens)
    ids[i, :len(encoded)] = encoded
  return ids


def corpus_texts(corpus_path, count: int = 2) -> list[str]:
  source = tfds_io.data_source(corpus_path, "test")
  return [source[i]["text"].decode()[:30] for i in range(count)]


def test_transformer_matches_ours(exported, corpus_tokens, corpus_path):
  _, ours, cfm = exported
  rng = np.random.default_rng(0)
  texts = corpus_texts(corpus_path)
  n = 40
  x = rng.standard_normal((2, n, 100)).astype(np.float32)
  cond = rng.standard_normal((2, n, 100)).astype(np.float32) * (np.arange(n) < 15)[None, :, None]
  text = text_ids(texts, corpus_tokens, 32)
  t = np.array([0.3, 0.8], np.float32)
  transformer = cfm.transformer.eval()
  with torch.no_grad():
    want = transformer(x=torch.from_numpy(x), cond=torch.from_numpy(cond), text=torch.from_numpy(text),
                       time=torch.from_numpy(t)).numpy()
  got = np.asarray(ours(x, cond, text, t))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=FLOW_ATOL, rtol=0)


def test_euler_sample_from_strings_matches_ours(exported, corpus_tokens, corpus_path):
  """CFM.sample given the transcripts as strings (tokenised by load_model's vocab.txt) against our sampler given
  our tokenizer's ids: the same noise, 4 Euler steps with CFG and sway."""
  _, ours, cfm = exported
  texts = corpus_texts(corpus_path)
  ref_frames, durations = (12, 8), (50, 44)
  ref_mel = np.random.default_rng(1).standard_normal((2, 12, 100)).astype(np.float32)
  with torch.no_grad():
    want, _ = cfm.sample(cond=torch.from_numpy(ref_mel), text=texts, duration=torch.tensor(durations),
                         lens=torch.tensor(ref_frames), steps=4, cfg_strength=2.0, sway_sampling_coef=-1.0, seed=SEED)
  noise = np.zeros((2, max(durations), 100), np.float32)
  for i, d in enumerate(durations):  # CFM.sample's noise: per example, manual_seed(seed) then randn(duration, mel)
    torch.manual_seed(SEED)
    noise[i, :d] = torch.randn(d, 100).numpy()
  got = sample.sample(ours, ref_mel, ref_frames, text_ids(texts, corpus_tokens, 32), durations,
                         noise_BxLxM=noise, nfe=4, cfg_strength=2.0, sway=-1.0, method="euler").mel
  valid = np.arange(max(durations))[None] < np.asarray(durations)[:, None]
  np.testing.assert_allclose(np.asarray(got)[valid], want.numpy()[valid], atol=SAMPLE_ATOL, rtol=0)


def test_a_plain_safetensors_dst_writes_the_checkpoint_alone(tmp_path, capsys, corpus_tokens):
  params = make_workdir(tmp_path / "wd", CFG, corpus_tokens)
  code, out = export(capsys, tmp_path / "wd", tmp_path / "model.safetensors")
  assert code == 0, out
  saved = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
  np.testing.assert_array_equal(saved["ema_model.transformer.text_embed.text_embed.weight"], params[convert.EMBEDDING])


@pytest.mark.parametrize("change, field", [({"mel_dim": 80}, "mel_dim=80"), ({"text_num_embeds": 20},
                                                                              "text_num_embeds=20")])
def test_what_load_model_cannot_build_is_refused(tmp_path, capsys, corpus_tokens, change, field):
  make_workdir(tmp_path / "wd", dataclasses.replace(CFG, **change), corpus_tokens)
  code, out = export(capsys, tmp_path / "wd", tmp_path / "f5")
  assert code == 2 and f"  {field}: " in out, out
  assert not os.path.exists(tmp_path / "f5")


def test_tokens_vocab_txt_cannot_hold_are_refused():
  assert convert.export_problems(CFG, [" ", "a", "b\nc", "a"]) == [
      "vocabulary tokens ['a', 'b\\nc']: F5's vocab.txt holds one distinct token per line"]
