"""Cache-aware streaming ASR: the compute latency of one chunk, against the chunk's audio, and offline inference.

    .venv/bin/python benchmarks/asr_streaming.py [--write] [--workdir W] [--streams 1,8] [--seconds 10]

The model is configs/asr.py:tiny_streaming (random weights, or a trained workdir's: same cost). A chunk is
`chunk_frames` 10 ms log-mel frames (320 ms); its algorithmic latency is the chunk itself (the look-ahead), to
which the compute latency measured here adds. Step: one jitted `streaming.step` for B streams at once (features
excluded, as a live front end computes them as audio arrives), median over the chunks of `--seconds` of
audio after a warm-up. Offline: the whole utterance in one call, the latency a non-streaming model adds at the
end of an utterance.
"""

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

import common
from jaxspeech.asr import family, streaming
from jaxspeech.asr.model import SIZES, FastConformerCTC
from jaxspeech.workdir import Workdir

SECTION = "ASR cache-aware streaming latency (issue #19)"
VERSIONS = ("jax", "jaxlib", "flax", "numpy")


def _model(workdir: str | None) -> FastConformerCTC:
  if workdir:
    return Workdir(workdir).load_model(family.FAMILY)[0]
  return FastConformerCTC(SIZES["tiny_streaming"], rngs=nnx.Rngs(0))


def measure(model: FastConformerCTC, streams: int, seconds: float) -> dict[str, float]:
  size = streaming.chunk_frames(model.cfg)
  chunks = int(seconds * 100) // size
  mel_BxTxM = np.random.default_rng(0).normal(size=(streams, chunks * size, model.cfg.num_mel_bins)
                                              ).astype(np.float32)
  step = streaming.compile_step(model)
  fed_B = np.full(streams, size, np.int32)
  stream = streaming.start(model, streams)
  times = []
  for k in range(chunks):
    begin = time.perf_counter()
    logits, _, stream = step(stream, mel_BxTxM[:, k * size:(k + 1) * size], fed_B)
    jax.block_until_ready(logits)
    times.append(time.perf_counter() - begin)
  graphdef, state = nnx.split(model)
  offline = jax.jit(lambda state, mel, mask: nnx.merge(graphdef, state)(mel, mask)[0])
  mask_BxT = np.ones(mel_BxTxM.shape[:2], bool)
  jax.block_until_ready(offline(state, mel_BxTxM, mask_BxT))
  whole = []
  for _ in range(3):
    begin = time.perf_counter()
    jax.block_until_ready(offline(state, mel_BxTxM, mask_BxT))
    whole.append(time.perf_counter() - begin)
  return {"chunk_ms": size * 10, "step_ms": 1e3 * statistics.median(times[2:]), "first_ms": 1e3 * times[0],
          "offline_ms": 1e3 * statistics.median(whole), "chunks": chunks}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default=None, help="a trained asr workdir (default: random tiny_streaming)")
  parser.add_argument("--streams", default="1,8", help="streams decoded together, comma-separated")
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of RESULTS.md")
  args = parser.parse_args()
  model = _model(args.workdir)
  rows = []
  for streams in (int(s) for s in args.streams.split(",")):
    r = measure(model, streams, args.seconds)
    rows.append(f"| {streams} | {r['chunk_ms']} | {r['step_ms']:.2f} | {r['step_ms'] / r['chunk_ms']:.3f} | "
                f"{r['first_ms']:.0f} | {args.seconds:g} s: {r['offline_ms']:.1f} |")
    print(rows[-1], flush=True)
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  command = "python benchmarks/asr_streaming.py --write" + (f" --workdir {args.workdir}" if args.workdir else "")
  text = (f"## {SECTION}\n\n`{command}`, {time.strftime('%Y-%m-%d', time.gmtime())}, "
          f"{common.machine()}; {common.versions(VERSIONS)}.\n\n"
          f"configs/asr.py:tiny_streaming ({'trained' if args.workdir else 'random'} weights, {params / 1e6:.1f}M params, 4 blocks, chunks of "
          f"{model.cfg.chunk} encoder frames, {model.cfg.att_context_left} frames of left context), float32. "
          "Compute latency of one jitted chunk step (median after a warm-up; features excluded), its share of "
          "the chunk's audio (below 1: keeps up with live audio), the first call's time (compile), and offline "
          "inference of the whole utterance in one call. The algorithmic latency is the chunk itself.\n\n"
          "| streams | chunk (audio ms) | step ms | step / chunk | first call ms | offline, whole utterance ms |\n"
          "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
  print(text)
  if args.write:
    common.write_section(SECTION, text)


if __name__ == "__main__":
  main()
