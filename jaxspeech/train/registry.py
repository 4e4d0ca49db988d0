"""Maps a config's `family` name to its folder. Families are imported only when asked for."""

import importlib

from jaxspeech.train.family import Family

FAMILIES = {
    "ast": "jaxspeech.ast.family",
    "codec": "jaxspeech.codec.family",
    "vocoder": "jaxspeech.vocoder.family",
    "llasa": "jaxspeech.llasa.family",
    "dit": "jaxspeech.dit.family",
}


def get(name: str) -> Family:
  if name not in FAMILIES:
    raise KeyError(f"unknown family {name!r}; known families: {sorted(FAMILIES)}")
  return importlib.import_module(FAMILIES[name]).FAMILY
