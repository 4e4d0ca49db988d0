"""`jaxspeech codec encode|decode|eval`: tokenize a dataset, turn codes back into audio, score a codec.

  jaxspeech codec encode --workdir CODEC --data-dir DATASET_DIR --out OUT_DIR [--splits train,validation]
  jaxspeech codec decode --workdir CODEC --codes CODES.npy|CODES.txt --out out.wav [--stream --chunk 25 --left 150]
  jaxspeech codec eval   --workdir CODEC [--data-dir DATASET_DIR] [--split validation]

Codes files hold one utterance: a .npy int array, or whitespace-separated integers.
"""

import json

import jax.numpy as jnp
import numpy as np
import soundfile

from jaxspeech.codec import evaluate, streaming, tokenize
from jaxspeech.data import tfds_io


def _encode(args):
  splits = args.splits.split(",") if args.splits else None
  out = tokenize.encode_dataset(args.workdir, args.data_dir, args.out, splits=splits, chunk=args.chunk,
                                per_device=args.per_device)
  info = tfds_io.load(out).info
  print(f"wrote {out}: " + ", ".join(f"{s} {info.splits[s].num_examples}" for s in sorted(info.splits)))


def read_codes(path: str):
  if path.endswith(".npy"):
    return np.load(path).astype(np.int32).reshape(-1)
  with open(path) as f:
    return np.array(f.read().split(), np.int32)


def _decode(args):
  codec, sample_rate, _ = tokenize.load_codec(args.workdir)
  codes = read_codes(args.codes)
  size = codec.quantizer.codebook_size
  if codes.size == 0 or codes.min() < 0 or codes.max() >= size:
    raise ValueError(f"{args.codes}: codes must be a non-empty list of integers in [0, {size})")
  if not args.stream:
    wav = np.asarray(codec.decode(jnp.asarray(codes)[None]))[0]
    soundfile.write(args.out, wav, sample_rate, subtype="PCM_16")
    print(f"wrote {args.out}: {len(wav) / sample_rate:.2f} s at {sample_rate} Hz from {codes.size} codes")
    return
  streamer = streaming.Streamer(codec, chunk=args.chunk, left=args.left, lookahead=args.lookahead)
  samples, first = streaming.write(args.out, streaming.pieces(streamer, codes), sample_rate)
  print(f"streamed {args.out}: {samples / sample_rate:.2f} s at {sample_rate} Hz from {codes.size} codes in chunks "
        f"of {args.chunk} (left {args.left}, look-ahead {args.lookahead}); first audio after {first:.2f} s of "
        "decoding (compiles included)")


def _eval(args):
  result = evaluate.evaluate_workdir(args.workdir, args.data_dir, args.split, per_device=args.per_device,
                                     limit=args.limit)
  print(json.dumps(result, indent=2))


def add_parser(groups) -> None:
  codec = groups.add_parser("codec", help="codec jobs: tokenize a dataset, decode codes, evaluate").add_subparsers(
      dest="command", required=True)
  p = codec.add_parser("encode", help="write the codes of every utterance of a dataset as a new TFDS dataset")
  p.add_argument("--workdir", required=True, help="a codec workdir (trained or converted)")
  p.add_argument("--data-dir", required=True, help="a speech dataset directory (NAME/VERSION)")
  p.add_argument("--out", required=True, help="the codes dataset directory to write (NAME/VERSION)")
  p.add_argument("--splits", default="", help="comma-separated splits (default: all)")
  p.add_argument("--chunk", type=int, default=64, help="records per resumable unit of work")
  p.add_argument("--per-device", type=int, default=4, help="utterances per device per batch")
  p.set_defaults(run=_encode)
  p = codec.add_parser("decode", help="decode one utterance's codes to a wav file")
  p.add_argument("--workdir", required=True)
  p.add_argument("--codes", required=True, help=".npy int array or a text file of integers")
  p.add_argument("--out", required=True, help="the .wav to write")
  p.add_argument("--stream", action="store_true", help="decode chunk by chunk, writing each as it is ready "
                 "(jaxspeech/codec/streaming.py)")
  p.add_argument("--chunk", type=int, default=25, help="codes per streamed chunk (50 codes = 1 s)")
  p.add_argument("--left", type=int, default=150, help="codes of left context each chunk is decoded with")
  p.add_argument("--lookahead", type=int, default=2, help="codes after a chunk it waits for")
  p.set_defaults(run=_decode)
  p = codec.add_parser("eval", help="mel distance, STOI, PESQ, codebook usage and perplexity on whole utterances")
  p.add_argument("--workdir", required=True)
  p.add_argument("--data-dir", default="data/synth_speech/1.0.0")
  p.add_argument("--split", default="validation")
  p.add_argument("--per-device", type=int, default=4)
  p.add_argument("--limit", type=int, default=None, help="only the first N utterances")
  p.set_defaults(run=_eval)

