"""Codec encode and decode real-time factor: jaxspeech's jitted Codec vs the xcodec2 PyTorch modules, same weights.

    .venv/bin/python benchmarks/codec_rtf.py [--write] [--sizes tiny,base] [--seconds 10] [--repeats 3]

Both sides hold the same random weights (the xcodec2 modules built as `tests/test_codec_parity.py` builds them,
converted by `jaxspeech.codec.convert`), acoustic only, batch 1, float32, on this CPU; torch with 2 threads.
`tiny` is configs/codec.py:tiny's codec with 32 GroupNorm groups instead of 16 (xcodec2's ResnetBlock fixes 32;
the FLOPs are the same), `base` the released X-codec2 shape without the semantic branch (w2v-BERT not included).
Encode: wav → codes (encoder, fc_prior, FSQ); decode: codes → wav (FSQ codebook, fc_post_a, Vocos decoder, ISTFT).
RTF = seconds / audio seconds; medians of alternating repeats after a warm-up (JAX compiles once per shape).
"""

import argparse
import os
import statistics
import sys
import time

import dit_train

SECTION = "Codec encode/decode RTF (X-codec2, issue #5)"
VERSIONS = ("jax", "jaxlib", "flax", "torch", "xcodec2", "vector-quantize-pytorch", "numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 16000

if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def reference_config(size: str) -> dict:
  """`tests/test_codec_parity.CONFIGS`-style shape of `jaxspeech.codec.sizes.SIZES[size]`, acoustic only."""
  from jaxspeech.codec import sizes  # pylint: disable=import-outside-toplevel
  cfg = sizes.SIZES[size]()
  return dict(channels=cfg.encoder.channels, strides=list(cfg.encoder.strides), dilations=list(cfg.encoder.dilations),
              enc_dim=cfg.encoder.dim, semantic=False, features=cfg.semantic.features, sem_dim=cfg.semantic.dim,
              vq_dim=cfg.fsq.dim, dec_dim=cfg.decoder.dim, depth=cfg.decoder.depth, heads=cfg.decoder.heads)


def measure(size: str, seconds: float, repeats: int) -> dict[str, list[float]]:
  """{"<side> <encode|decode>": seconds per repeat} for `seconds` of audio."""
  import numpy as np
  import torch
  from flax import nnx
  from tests import test_codec_parity as parity
  c = reference_config(size)
  torch.manual_seed(0)
  ref = parity.Reference(c).eval()
  ours = parity.codec_from(ref, parity.codec_config(c))
  hop = int(np.prod(c["strides"]))
  samples = int(seconds * RATE) // hop * hop
  wav_1xS = (0.1 * np.random.default_rng(0).standard_normal((1, samples))).astype(np.float32)
  encode, decode = nnx.jit(lambda m, w: m.encode(w)), nnx.jit(lambda m, c: m.decode(c))
  codes_1xN = np.asarray(encode(ours, wav_1xS))

  @torch.no_grad()
  def torch_encode(wav):
    x_BxNxC = ref.fc_prior(ref.CodecEnc(wav[:, None]))
    return ref.generator(x_BxNxC.transpose(1, 2), vq=True)[1]

  @torch.no_grad()
  def torch_decode(codes_Bx1xN):
    z_q_BxNxD = ref.generator.quantizer.get_output_from_indices(codes_Bx1xN.transpose(1, 2))
    return ref.generator(ref.fc_post_a(z_q_BxNxD), vq=False)[0]

  wav_t, codes_t = torch.from_numpy(wav_1xS), torch.from_numpy(codes_1xN[:, None].astype(np.int64))
  runs = {"jaxspeech encode": lambda: encode(ours, wav_1xS).block_until_ready(),
          "xcodec2 (torch) encode": lambda: torch_encode(wav_t),
          "jaxspeech decode": lambda: decode(ours, codes_1xN).block_until_ready(),
          "xcodec2 (torch) decode": lambda: torch_decode(codes_t)}
  times = {name: [] for name in runs}
  for repeat in range(repeats + 1):
    for name, run in runs.items():
      t0 = time.perf_counter()
      run()
      if repeat:  # the first round compiles and warms up
        times[name].append(time.perf_counter() - t0)
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--write", action="store_true")
  parser.add_argument("--sizes", default="tiny,base")
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  import torch
  torch.set_num_threads(2)
  from tests import reference_stubs
  reference_stubs.stub_references()
  table = ["| size | step | jaxspeech s | jaxspeech RTF | xcodec2 (torch) s | xcodec2 RTF | torch / jaxspeech |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  ratios = []
  for size in args.sizes.split(","):
    times = measure(size, args.seconds, args.repeats)
    for step in ("encode", "decode"):
      ours, theirs = (statistics.median(times[f"{side} {step}"]) for side in ("jaxspeech", "xcodec2 (torch)"))
      ratios.append(f"{size} {step} {theirs / ours:.2f}×")
      table.append(f"| {size} | {step} | {ours:.3f} | {ours / args.seconds:.4f} | {theirs:.3f} | "
                   f"{theirs / args.seconds:.4f} | {theirs / ours:.2f} |")
  dit_train.report(
      SECTION, "codec_rtf.py", VERSIONS,
      f"Sizes {args.sizes} (acoustic only, random weights shared by both sides), batch 1, {args.seconds:g} s of "
      f"16 kHz audio, float32; medians of {args.repeats} alternating repeats after a warm-up.",
      table, f"torch / jaxspeech time (above 1: jaxspeech is faster): {', '.join(ratios)}.", args.write)


if __name__ == "__main__":
  main()
