"""The `jaxspeech` command line.

  jaxspeech data synth [--num-utterances N] [--seed S] --data-dir DIR
  jaxspeech data build --dataset ljspeech|libritts|manifest --manual-dir PATH --data-dir DIR
  jaxspeech data info DATASET_DIR
  jaxspeech text train --dataset DATASET_DIR --output FILE.model [--vocab-size V]
  jaxspeech train --config=configs/ast.py:tiny --workdir=DIR [--config.train.steps=100 ...]
  jaxspeech eval  --config=configs/ast.py:tiny --workdir=DIR
  jaxspeech plan  --config=configs/ast.py:base --mesh data=2,fsdp=4 [--device h100] [--hbm-gib 80]
  jaxspeech sweep run --config=configs/sweeps/ast_cpu.py --workdir=DIR [--backend local|slurm|xpk]
  jaxspeech sweep fit --workdir=DIR                   (see jaxspeech/sweep/cli.py)
  jaxspeech convert ast --from hf|original --src PATH --dst WORKDIR    (see jaxspeech/convert/cli.py)
  jaxspeech convert ast --to hf --src WORKDIR --dst DIR
  jaxspeech codec encode|decode|eval --workdir CODEC ...    (see jaxspeech/codec/cli.py)
  jaxspeech synthesize --lm WORKDIR --codec WORKDIR --tokenizer FILE --text "..." --out out.wav   (Llasa)
  jaxspeech llasa eval --lm WORKDIR --codec WORKDIR --tokenizer FILE [--split test]    (see jaxspeech/llasa/cli.py)
  jaxspeech synthesize --dit WORKDIR [--vocoder WORKDIR] --ref-audio ref.wav --ref-text "..." --text "..." --out out.wav
  jaxspeech dit eval --dit WORKDIR [--vocoder WORKDIR] [--split test_unseen]    (see jaxspeech/dit/cli.py)
"""

import argparse
import glob
import os
import sys

from jaxspeech.codec import cli as codec_cli  # light: imports the codec only when run
from jaxspeech.convert import cli as convert_cli  # light: imports a family's converter only when run
from jaxspeech.llasa import cli as llasa_cli  # light: argparse only until run
from jaxspeech.dit import cli as dit_cli  # light: argparse only until run


def _data_synth(args):
  from jaxspeech.data.synth import corpus
  path = corpus.synthesize(args.data_dir, num_utterances=args.num_utterances, seed=args.seed)
  _print_info(path)


def _data_build(args):
  from jaxspeech.data import builders
  result = builders.build(args.dataset, args.manual_dir, args.data_dir, max_seconds=args.max_seconds,
                          sample_rate=args.sample_rate, name=args.name)
  _print_info(result.path)


def _data_info(args):
  _print_info(args.path)


def _print_info(path):
  from jaxspeech.data import tfds_io
  info = tfds_io.load(path).info
  meta = tfds_io.metadata(path)
  print(f"dataset {path}")
  for name, split in sorted(info.splits.items()):
    on_disk = sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, f"*-{name}.array_record-*")))
    print(f"  {name:<12} {split.num_examples:>8} examples  {on_disk / 2**20:9.1f} MiB on disk")
  if meta.get("speakers"):
    print(f"  speakers: {len(meta['speakers'])}")


def _text_train(args):
  from jaxspeech.data import tfds_io
  from jaxspeech.text import spm
  source = tfds_io.data_source(args.dataset, args.split)
  texts = (source[i]["text"].decode() for i in range(len(source)))
  tokenizer = spm.train_bpe(texts, vocab_size=args.vocab_size)
  tokenizer.save(args.output)
  print(f"wrote {args.output}: {tokenizer.vocab_size} pieces from {len(source)} transcripts")


def _synthesize(args):
  if not args.text.strip():
    raise ValueError(f"--text {args.text!r} has nothing to speak")
  if args.lm and args.dit:
    raise ValueError("synthesize takes one model: --lm or --dit")
  if args.lm:
    llasa_cli.synthesize(args)
  elif args.dit:
    dit_cli.synthesize(args)
  else:
    raise ValueError("synthesize needs a model: --lm WORKDIR (Llasa) or --dit WORKDIR (F5-style DiT)")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxspeech", description="Train speech models in JAX.")
  groups = parser.add_subparsers(dest="group", required=True)
  groups.add_parser("train", help="train a model: --config=configs/<family>.py:<variant> --workdir=DIR")
  groups.add_parser("eval", help="evaluate a workdir's newest checkpoint")
  groups.add_parser("plan", help="memory, FLOPs and step time of a config on a mesh (see jaxspeech/train/plan.py)")
  groups.add_parser("sweep", help="scaling-law sweeps: run, fit, status (see jaxspeech/sweep/cli.py)")

  data = groups.add_parser("data", help="build and inspect datasets").add_subparsers(dest="command", required=True)
  p = data.add_parser("synth", help="synthesise the embedded multi-speaker English corpus (offline, espeak-ng)")
  p.add_argument("--num-utterances", type=int, default=1200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", required=True)
  p.set_defaults(run=_data_synth)
  p = data.add_parser("build", help="build a TFDS dataset from a corpus on disk")
  p.add_argument("--dataset", required=True, choices=("ljspeech", "libritts", "manifest"))
  p.add_argument("--manual-dir", required=True, help="the corpus root (or the JSONL manifest)")
  p.add_argument("--data-dir", required=True)
  p.add_argument("--max-seconds", type=float, default=30.0, help="longer clips are skipped and counted")
  p.add_argument("--sample-rate", type=int, default=None, help="resample every clip to this rate (Hz)")
  p.add_argument("--name", default=None, help="dataset name (default: the --dataset value)")
  p.set_defaults(run=_data_build)
  p = data.add_parser("info", help="print a dataset's splits")
  p.add_argument("path", help="a dataset directory (NAME/VERSION)")
  p.set_defaults(run=_data_info)

  text = groups.add_parser("text", help="tokenizers").add_subparsers(dest="command", required=True)
  p = text.add_parser("train", help="train a sentencepiece BPE model on a dataset's transcripts")
  p.add_argument("--dataset", required=True, help="a dataset directory (NAME/VERSION)")
  p.add_argument("--split", default="train")
  p.add_argument("--output", required=True)
  p.add_argument("--vocab-size", type=int, default=1024)
  p.set_defaults(run=_text_train)
  convert_cli.add_parser(groups)
  codec_cli.add_parser(groups)
  llasa_cli.add_parser(groups)
  dit_cli.add_parser(groups)
  p = groups.add_parser("synthesize", help="text to speech: --lm (Llasa LM + codec workdirs)")
  p.add_argument("--text", required=True)
  p.add_argument("--out", required=True, help="the wav file to write")
  llasa_cli.add_arguments(p)
  dit_cli.add_arguments(p)
  p.set_defaults(run=_synthesize)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == "sweep":
    from jaxspeech.sweep import cli as sweep_cli
    return sweep_cli.main(argv[1:])
  if argv and argv[0] == "plan":
    from jaxspeech.train import plan
    return plan.main(argv[1:])
  if argv and argv[0] in ("train", "eval"):  # absl + ml_collections flags, as in big_vision and MaxText
    from jaxspeech.train import host
    host.reexec_with_malloc_tuning(["-m", "jaxspeech.cli", *argv])
    from jaxspeech.train import main as train_main
    train_main.run(argv[0], argv[1:])
    return 0
  args = _parser().parse_args(argv)
  try:
    args.run(args)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"jaxspeech: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
