"""`jaxspeech data synth|build|info`: build and inspect speech datasets (TFDS ArrayRecord)."""

import glob
import os

from jaxspeech.data import builders, tfds_io
from jaxspeech.data.synth import corpus


def _synth(args) -> None:
  print_info(corpus.synthesize(args.data_dir, num_utterances=args.num_utterances, seed=args.seed))


def _build(args) -> None:
  result = builders.build(args.dataset, args.manual_dir, args.data_dir, max_seconds=args.max_seconds,
                          sample_rate=args.sample_rate, name=args.name)
  print_info(result.path)


def print_info(path: str) -> None:
  info = tfds_io.load(path).info
  meta = tfds_io.metadata(path)
  print(f"dataset {path}")
  for name, split in sorted(info.splits.items()):
    on_disk = sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, f"*-{name}.array_record-*")))
    print(f"  {name:<12} {split.num_examples:>8} examples  {on_disk / 2**20:9.1f} MiB on disk")
  if meta.get("speakers"):
    print(f"  speakers: {len(meta['speakers'])}")


def add_parser(groups) -> None:
  data = groups.add_parser("data", help="build and inspect datasets").add_subparsers(dest="command", required=True)
  p = data.add_parser("synth", help="synthesise the embedded multi-speaker English corpus (offline, espeak-ng)")
  p.add_argument("--num-utterances", type=int, default=1200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", required=True)
  p.set_defaults(run=_synth)
  p = data.add_parser("build", help="build a TFDS dataset from a corpus on disk")
  p.add_argument("--dataset", required=True, choices=("ljspeech", "libritts", "manifest"))
  p.add_argument("--manual-dir", required=True, help="the corpus root (or the JSONL manifest)")
  p.add_argument("--data-dir", required=True)
  p.add_argument("--max-seconds", type=float, default=30.0, help="longer clips are skipped and counted")
  p.add_argument("--sample-rate", type=int, default=None, help="resample every clip to this rate (Hz)")
  p.add_argument("--name", default=None, help="dataset name (default: the --dataset value)")
  p.set_defaults(run=_build)
  p = data.add_parser("info", help="print a dataset's splits")
  p.add_argument("path", help="a dataset directory (NAME/VERSION)")
  p.set_defaults(run=lambda args: print_info(args.path))
