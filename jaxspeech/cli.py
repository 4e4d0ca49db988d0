"""The `jaxspeech` command line: `jaxspeech <command> ...`, and `jaxspeech <family> <verb> ...` for the verbs a
family registers (its package's `cli.add_parser`; see `jaxspeech.train.registry`).

  jaxspeech data synth|build|info ...                  datasets (jaxspeech/data/cli.py)
  jaxspeech text train --dataset DIR --output FILE.model
  jaxspeech train --config=configs/ast.py:tiny --workdir=DIR [--config.train.steps=100 ...]
  jaxspeech eval  --config=configs/ast.py:tiny --workdir=DIR
  jaxspeech plan  --config=configs/ast.py:base --mesh data=2,fsdp=4 | --topology v5p-128
  jaxspeech sweep run|fit|status|task ...              scaling-law sweeps (jaxspeech/sweep/cli.py)
  jaxspeech convert <family> --from SRC|--to DST ...   checkpoints in and out (jaxspeech/convert/cli.py)
  jaxspeech codec encode|decode|eval ...
  jaxspeech llasa synthesize|eval ...
  jaxspeech dit synthesize|eval ...

`jaxspeech synthesize --lm ...` and `jaxspeech synthesize --dit ...` are the previous release's spellings of
`jaxspeech llasa synthesize` and `jaxspeech dit synthesize`; they still work, with a notice.
"""

import argparse
import importlib
import sys

from jaxspeech.train import config as config_lib, host, registry

COMMANDS = ("jaxspeech.data.cli", "jaxspeech.text.cli", "jaxspeech.train.main", "jaxspeech.train.plan",
            "jaxspeech.sweep.cli", "jaxspeech.convert.cli")
ALIAS = "synthesize"


def _families() -> dict:
  """{family: its cli module} for the families that register commands."""
  return {name: module for name in registry.FAMILIES if (module := registry.part(name, "cli")) is not None}


def _unalias(argv: list[str], families: dict) -> list[str]:
  """`synthesize FLAG ...` → `<family> synthesize FLAG ...` for the family whose SYNTHESIZE_FLAG is FLAG."""
  if argv[:1] != [ALIAS]:
    return argv
  flags = {name: module.SYNTHESIZE_FLAG for name, module in families.items() if hasattr(module, "SYNTHESIZE_FLAG")}
  given = [name for name, flag in flags.items() if any(a == flag or a.startswith(flag + "=") for a in argv)]
  if not given and ("-h" in argv or "--help" in argv):
    return argv
  if len(given) != 1:
    raise ValueError(f"{ALIAS} takes one model: " + " or ".join(
        f"{flag} WORKDIR (jaxspeech {name} {ALIAS})" for name, flag in flags.items()))
  print(f"note: `jaxspeech {ALIAS} {flags[given[0]]}` is now `jaxspeech {given[0]} {ALIAS}`; the old spelling "
        "goes in the next release", file=sys.stderr)
  return [given[0], *argv]


class Parser(argparse.ArgumentParser):
  """Bad input is one line naming the problem (argparse prints the usage too), for every command."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser(families: dict) -> argparse.ArgumentParser:
  p = Parser(prog="jaxspeech", description="Train speech models in JAX.",
                              epilog="`jaxspeech COMMAND --help` lists a command's flags.")
  groups = p.add_subparsers(dest="group", required=True, metavar="COMMAND")
  for name in COMMANDS:
    importlib.import_module(name).add_parser(groups)
  for module in families.values():
    module.add_parser(groups)
  spellings = ", ".join(f"`jaxspeech {ALIAS} {m.SYNTHESIZE_FLAG} ...` is `jaxspeech {n} {ALIAS} ...`"
                        for n, m in families.items() if hasattr(m, "SYNTHESIZE_FLAG"))
  groups.add_parser(ALIAS, help=f"the previous spelling of `jaxspeech <family> {ALIAS}`",
                    description=f"The previous release's spelling: {spellings}. Their --help lists the flags.")
  return p


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] in (["train"], ["eval"]):
    host.reexec_with_malloc_tuning(["-m", "jaxspeech.cli", *argv])
  families = _families()
  try:
    argv = _unalias(argv, families)
  except ValueError as e:
    print(f"jaxspeech: error: {e}", file=sys.stderr)
    return 2
  p = parser(families)
  try:
    args, extra = p.parse_known_args(argv)
    overrides = getattr(args, "config_overrides", False)
    if extra and not overrides:
      p.error(f"unrecognized arguments: {' '.join(extra)}")
  except SystemExit as e:  # --help, or bad input (printed)
    return int(e.code or 0)
  args.argv = argv  # the command as given, for a command that reruns itself (plan, in a child with fake devices)
  try:
    if overrides:
      args.config = config_lib.load(args.config, extra)
    return args.run(args) or 0
  except (FileNotFoundError, KeyError, ValueError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"jaxspeech {args.group}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
