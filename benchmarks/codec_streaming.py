"""Streaming codec decode against whole-utterance decoding (issue #22, part 3).

    jaxspeech train --config=configs/codec.py:tiny --workdir=workdirs/codec_tiny --config.train.steps=300
    .venv/bin/python benchmarks/codec_streaming.py --workdir workdirs/codec_tiny [--limit 8] [--write]

The first `limit` test utterances are encoded whole; their codes are decoded whole (the reference) and streamed
(`jaxspeech/codec/streaming.py`, pushed one code at a time) for each chunk, left context and look-ahead. Per
setting: the multi-resolution log-mel L1 (the codec's training loss) and PESQ-wb of the streamed audio against
the whole decode of the same codes; the latency past the chunk's last code (look-ahead at 50 codes/s plus the
first window's decode, compiled, mean of 3); the decode's real-time factor (compiled).
"""

import argparse
import datetime
import time

import jax.numpy as jnp
import numpy as np

import common
from jaxspeech.audio import quality
from jaxspeech.codec import inference, streaming, tokenize
from jaxspeech.data import tfds_io
from jaxspeech.gan import losses

SECTION = "Codec streaming decode against whole utterances (issue #22)"
VERSIONS = ("jax", "jaxlib", "flax", "numpy", "pesq")
GRID = [(chunk, left, lookahead) for chunk in (10, 25, 50) for left in (0, 50, 150) for lookahead in (0, 2)]
CODE_RATE = 50


def first_window_seconds(codec, codes, chunk, left, lookahead) -> float:
  """Seconds from a first chunk's look-ahead arriving to its audio (compiled; mean of 3)."""
  times = []
  for _ in range(4):
    streamer = streaming.Streamer(codec, chunk=chunk, left=left, lookahead=lookahead)
    streamer.push(codes[:chunk + lookahead - 1])
    start = time.perf_counter()
    streamer.push(codes[chunk + lookahead - 1:chunk + lookahead])
    times.append(time.perf_counter() - start)
  return float(np.mean(times[1:]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a codec workdir")
  parser.add_argument("--data-dir", default="data/synth_speech/1.0.0")
  parser.add_argument("--limit", type=int, default=8)
  parser.add_argument("--write", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
  args = parser.parse_args()
  codec, rate, hop = tokenize.load_codec(args.workdir)
  source = tfds_io.data_source(args.data_dir, "test")
  wavs = [inference.decode_audio(source[i], rate) for i in range(min(args.limit, len(source)))]
  codes = [np.asarray(codec.encode(jnp.asarray(w)[None]))[0] for w in wavs]
  wholes = [np.asarray(codec.decode(jnp.asarray(c)[None]))[0] for c in codes]
  seconds = sum(len(w) for w in wholes) / rate
  rows = []
  for chunk, left, lookahead in GRID:
    for c in codes:   # compiles every window length first
      streaming.decode(codec, c, chunk=chunk, left=left, lookahead=lookahead)
    start = time.perf_counter()
    streamed = [np.concatenate(streaming.decode(codec, c, chunk=chunk, left=left, lookahead=lookahead))
                for c in codes]
    wall = time.perf_counter() - start
    mel = [float(losses.mel_distance(jnp.asarray(w)[None], jnp.asarray(s)[None], rate)[0])
           for w, s in zip(wholes, streamed)]
    lengths = np.asarray([len(w) for w in wholes])
    width = int(lengths.max())
    pad = lambda xs: np.stack([np.pad(x, (0, width - len(x))) for x in xs])   # noqa: E731
    _, pesq_B = quality.scores(pad(wholes), pad(streamed), lengths, np.ones(len(wholes), bool), rate)
    latency = lookahead / CODE_RATE + first_window_seconds(codec, codes[0], chunk, left, lookahead)
    rows.append(f"| {chunk} ({chunk / CODE_RATE * 1000:.0f} ms) | {left} ({left / CODE_RATE:g} s) | {lookahead} | "
                f"{np.mean(mel):.3f} | {np.mean(pesq_B):.2f} | {latency * 1000:.0f} | {wall / seconds:.3f} |")
    print(rows[-1], flush=True)
  whole_start = time.perf_counter()
  for c in codes:   # compiled above
    np.asarray(codec.decode(jnp.asarray(c)[None]))
  whole_rtf = (time.perf_counter() - whole_start) / seconds
  text = "\n".join([
      f"## {SECTION}", "",
      f"`python benchmarks/codec_streaming.py --workdir {args.workdir} --limit {args.limit} --write`, "
      f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}, {common.machine()}; {common.versions(VERSIONS)}. "
      + __doc__.split("\n\n")[2].replace("\n", " ") + f" {len(codes)} utterances, {seconds:.1f} s; decoding them "
      f"whole runs at RTF {whole_rtf:.3f} (compiled).", "",
      "| chunk codes | left context codes | look-ahead codes | mel L1 to whole | PESQ-wb vs whole | latency ms | RTF |",
      "| --- | --- | --- | --- | --- | --- | --- |", *rows, ""])
  print(text)
  if args.write:
    common.write_section(SECTION, text)


if __name__ == "__main__":
  main()
