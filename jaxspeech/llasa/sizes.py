"""Model shapes: `tiny` for CPU tests, `150m`, and the Llama 3 shapes Llasa 1B / 3B / 8B are built on.

The official shapes use Llasa's vocabulary (128,256 Llama 3 ids + 8 specials + 65,536 speech codes) and
Llama 3.1 / 3.2's RoPE (θ 500,000, llama3 scaling ×8 or ×32 over 8,192 positions). Llasa-1B is tied,
3B and 8B untied, as their HF checkpoints' `tie_word_embeddings`.
"""

from jaxspeech.llasa.vocab import LlasaVocab

LLASA_VOCAB = LlasaVocab().size  # 193,800
LLAMA3_ROPE = dict(rope_theta=500_000.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                   rope_original_max_positions=8192)

SIZES = {
    # vocab_size of `tiny` is set by the config from its text vocabulary and codebook size
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp=192, rope_theta=10_000.0,
                 tie_embeddings=True),
    # 146M params, 99M of them the (tied) Llasa embedding
    "150m": dict(vocab_size=LLASA_VOCAB, hidden=512, layers=12, heads=8, kv_heads=4, head_dim=64, mlp=2048,
                 rope_theta=500_000.0, tie_embeddings=True),
    "1b": dict(vocab_size=LLASA_VOCAB, hidden=2048, layers=16, heads=32, kv_heads=8, head_dim=64, mlp=8192,
               rope_factor=32.0, tie_embeddings=True, **LLAMA3_ROPE),
    "3b": dict(vocab_size=LLASA_VOCAB, hidden=3072, layers=28, heads=24, kv_heads=8, head_dim=128, mlp=8192,
               rope_factor=32.0, tie_embeddings=False, **LLAMA3_ROPE),
    "8b": dict(vocab_size=LLASA_VOCAB, hidden=4096, layers=32, heads=32, kv_heads=8, head_dim=128, mlp=14336,
               rope_factor=8.0, tie_embeddings=False, **LLAMA3_ROPE),
}


def param_count(size: dict) -> int:
  """Params of a shape in `SIZES` (with its vocab_size), the padded embedding rows not counted."""
  d, n, k = size["hidden"], size["layers"], size["head_dim"]
  attn = d * k * (2 * size["heads"] + 2 * size["kv_heads"])
  per_layer = attn + 3 * d * size["mlp"] + 2 * d
  embed = size["vocab_size"] * d * (1 if size["tie_embeddings"] else 2)
  return n * per_layer + embed + d
