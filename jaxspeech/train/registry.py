"""The families: a config's `family` name → its package. `<package>.family` defines `FAMILY`; the optional
`<package>.cli` adds the family's `jaxspeech <family> <verb>` commands and `<package>.convert` is its
converter (`jaxspeech convert <family>`). Adding a family is one line here. Modules are imported only when
asked for."""

import importlib
import importlib.util
import types
import typing

if typing.TYPE_CHECKING:  # the CLI reads this module before `train` re-executes itself (train/host.py): no JAX
  from jaxspeech.train.family import Family

FAMILIES = {
    "ast": "jaxspeech.ast",
    "codec": "jaxspeech.codec",
    "vocoder": "jaxspeech.vocoder",
    "llasa": "jaxspeech.llasa",
    "dit": "jaxspeech.dit",
    "asr": "jaxspeech.asr",
}


def _check(name: str) -> None:
  if name not in FAMILIES:
    raise KeyError(f"unknown family {name!r}; known families: {sorted(FAMILIES)}")


def get(name: str) -> "Family":
  _check(name)
  return importlib.import_module(f"{FAMILIES[name]}.family").FAMILY


def part(name: str, module: str) -> types.ModuleType | None:
  """The family's optional `module` ("cli", "convert"), or None where the family has none."""
  _check(name)
  qualified = f"{FAMILIES[name]}.{module}"
  return importlib.import_module(qualified) if importlib.util.find_spec(qualified) else None
