"""HF Llama references for the Llasa tests: random-init `LlamaForCausalLM`s at small sizes, our Llama holding
their weights, and a tokenizer that `AutoTokenizer` loads."""

import tokenizers
import torch
import transformers
from flax import nnx

from jaxspeech.convert import mapping
from jaxspeech.llasa import convert
from jaxspeech.llasa.model import Llama, LlamaConfig

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10_000.0}

HF_CONFIGS = {
    "mha-plain-rope-untied": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=4, intermediate_size=96, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}),
    "gqa2-llama3-rope-tied-vocab1003": dict(vocab_size=1003, hidden_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                            tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE),
    "gqa4-headdim32-llama3-untied": dict(vocab_size=777, hidden_size=96, num_hidden_layers=3, num_attention_heads=8,
                                         num_key_value_heads=2, head_dim=32, intermediate_size=128,
                                         tie_word_embeddings=False, rms_norm_eps=1e-5, rope_parameters=LLAMA3_ROPE),
}


def hf_llama(name: str, seed: int = 0) -> transformers.LlamaForCausalLM:
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_CONFIGS[name]))
  with torch.no_grad():  # HF inits the norms to ones: perturb them so a swapped norm would show
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def llama_with(cfg: LlamaConfig, params: dict) -> Llama:
  """A Llama holding `params` (dotted paths), built without running the random init."""
  model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, mapping.unflatten(params))
  nnx.update(model, state)
  return model


def ours_from(hf: transformers.LlamaForCausalLM, **overrides) -> Llama:
  cfg = convert.hf_config_to_llama(hf.config.to_dict(), **overrides)
  return llama_with(cfg, convert.from_hf_state_dict(hf.state_dict(), cfg))


def save_tokenizer(path, vocab_size: int) -> None:
  """A word-level tokenizer.json + tokenizer_config.json that `AutoTokenizer` loads."""
  words = {f"w{i}": i for i in range(vocab_size)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="w0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(path)
