"""PyTorch references for the AST tests: HF's models with noise on every param, a tiny HF config, its inputs,
and `jaxspeech convert ast` run in-process."""

import numpy as np
import torch
import transformers

from jaxspeech.convert import cli as convert_cli

# A tiny AST: 32 mel bins × 64 frames in 16×16 patches at stride 16 (2×4 grid), so it compiles in seconds.
HF_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_length=64,
                 num_mel_bins=32, frequency_stride=16, time_stride=16, num_labels=3)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """`model` with noise on every param: HF zero-inits the tokens, position embeddings and biases."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def hf_model(cls=transformers.ASTForAudioClassification, seed: int = 0, **overrides):
  torch.manual_seed(seed)
  return perturbed(cls(transformers.ASTConfig(**{**HF_CONFIG, **overrides})), seed)


def fbank(batch: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, HF_CONFIG["max_length"], HF_CONFIG["num_mel_bins"])
                                           ).astype(np.float32)


def run_inprocess(capsys, *args: str) -> tuple[int, str, str]:
  """(exit code, stdout, stderr) of `jaxspeech convert ast ARGS` run in this process."""
  capsys.readouterr()
  code = convert_cli.run("ast", list(map(str, args)))
  out = capsys.readouterr()
  return code, out.out, out.err
