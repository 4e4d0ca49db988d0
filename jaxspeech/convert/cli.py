"""`jaxspeech convert <family>`: checkpoints in and out of jaxspeech workdirs.

  jaxspeech convert ast --from hf|original --src PATH --dst WORKDIR [family flags]
  jaxspeech convert ast --to hf --src WORKDIR --dst DIR [--step N | --best] [--weights auto|params|ema]
  jaxspeech convert dit --from f5 --src CKPT.pt|.safetensors --dst WORKDIR [--config=configs/dit.py:base ...]
  jaxspeech convert dit --to f5 --src WORKDIR --dst DIR|OUT.safetensors   (DIR: weights, vocab.txt, model.yaml)
  jaxspeech convert codec --from xcodec2|hf --src CKPT.safetensors|DIR --dst WORKDIR [--heads N ...] [--w2vbert HF_DIR]
  jaxspeech convert codec --to xcodec2|hf --src WORKDIR --dst DIR [--step N | --best] [--weights auto|params|ema]
  jaxspeech convert llasa --from hf --src HF_DIR --dst WORKDIR  /  --to hf --src WORKDIR --dst DIR [--tokenizer T]
  jaxspeech convert asr --from hf --src HF_DIR --dst WORKDIR  /  --to hf --src WORKDIR --dst DIR

A family's converter is its package's `convert` module (`jaxspeech/codec/convert.py`; the vocoder has none). It
provides `SOURCES` and `TARGETS` ({name: help}), `add_arguments(parser)` for its own flags,
`import_checkpoint(source, src, args) -> workdir.Imported` and
`export_checkpoint(target, checkpoint, dst, args) -> list[str]` (lines to print). This module imports it
by name only when asked.

Problems (a checkpoint of another family, missing, unexpected or misshaped keys) are printed one per line
as `jaxspeech convert: error: ...` and exit 2, with nothing written at --dst.
"""

import argparse
import os
import sys

from absl import logging

from jaxspeech.convert import workdir
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.train import registry
from jaxspeech.workdir import Workdir

PROG = "jaxspeech convert"


def add_parser(groups) -> None:
  """Registers `convert` under the top-level `jaxspeech` subcommands."""
  p = groups.add_parser(
      "convert", help="import a checkpoint into a workdir, or export a workdir's params (e.g. to Hugging Face)",
      description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("family", help="the model family, e.g. ast")
  p.add_argument("args", nargs=argparse.REMAINDER, help="--from/--to, --src, --dst and the family's flags")
  p.set_defaults(run=lambda args: run(args.family, args.args))


def converter(family: str):
  """The family's converter module."""
  module = registry.part(family, "convert")
  if module is None:
    raise KeyError(f"family {family!r} has no converter ({registry.FAMILIES[family]}.convert)")
  return module


def family_parser(family: str, module) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"{PROG} {family}", description=module.__doc__.split("\n\n")[0])
  direction = parser.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from", dest="source", choices=sorted(module.SOURCES),
                         help="import: " + "; ".join(f"{k}: {v}" for k, v in module.SOURCES.items()))
  direction.add_argument("--to", dest="target", choices=sorted(module.TARGETS),
                         help="export: " + "; ".join(f"{k}: {v}" for k, v in module.TARGETS.items()))
  parser.add_argument("--src", required=True, help="the checkpoint to import, or the workdir to export")
  parser.add_argument("--dst", required=True, help="the new workdir (import) or output directory (export)")
  out = parser.add_argument_group("export (--to)")
  out.add_argument("--step", type=int, default=None, help="the checkpoint step to export (default: the newest)")
  out.add_argument("--best", action="store_true", help="export the best checkpoint (workdir/best) instead")
  out.add_argument("--weights", choices=("auto", "params", "ema"), default="auto",
                   help="auto: the EMA when the checkpoint has one (what `jaxspeech eval` uses), else params")
  module.add_arguments(parser)
  return parser


def _print_error(e: Exception) -> None:
  if isinstance(e, ConversionError):
    print(f"{PROG}: error: {e.what}:", file=sys.stderr)
    for problem in e.problems:
      print(f"  {problem}", file=sys.stderr)
  else:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"{PROG}: error: {message}", file=sys.stderr)


def run(family: str, argv: list[str]) -> int:
  """Runs one conversion; 0 on success, 2 on a problem the user must fix (printed, no traceback)."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # Orbax reports every step at INFO and WARNING
  try:
    return _run(family, argv)
  finally:
    logging.set_verbosity(verbosity)


def _run(family: str, argv: list[str]) -> int:
  try:
    module = converter(family)
  except KeyError as e:
    _print_error(e)
    return 2
  parser = family_parser(family, module)
  unknown = [a for a in argv if a.startswith("--") and not any(
      o.startswith(a.split("=")[0]) for o in parser._option_string_actions)]  # pylint: disable=protected-access
  if unknown:  # before argparse's own complaint about a missing --src or --to, which would hide the typo
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  args = parser.parse_args(argv)
  if args.source and (args.step is not None or args.best or args.weights != "auto"):
    parser.error("--step, --best and --weights apply to --to only")
  try:
    if args.source:
      workdir.check_destination(args.dst)
      imported = module.import_checkpoint(args.source, args.src, args)
      record = workdir.write(args.dst, family, imported,
                             {"from": args.source, "source": os.path.abspath(args.src)})
      for note in imported.notes:
        print(f"note: {note}", file=sys.stderr)
      print(f"wrote {args.dst}: {record['imported']} params from {args.src} ({args.source}: {record.get('layout')})"
            + (f"; initialised {record['initialised']}" if record["initialised"] else ""))
    else:
      workdir.check_destination(args.dst)
      checkpoint = Workdir(args.src).read_params(family, step=args.step, best=args.best, weights=args.weights)
      if getattr(module, "EXPORTS_FILE", False):  # one file at --dst, which the converter stages itself
        lines = module.export_checkpoint(args.target, checkpoint, args.dst, args)
      else:
        with workdir.staged(args.dst) as tmp:
          lines = module.export_checkpoint(args.target, checkpoint, tmp, args)
      print(f"wrote {args.dst}: {checkpoint.weights} of {args.src} at step {checkpoint.step}")
      for line in lines:
        print(f"  {line}")
  except (OSError, KeyError, ValueError) as e:
    _print_error(e)
    return 2
  return 0
