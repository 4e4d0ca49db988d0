"""The command line's shape: every command and family verb is registered, has a working --help, and bad
input is one line."""

import argparse
import time

import pytest

from jaxspeech import cli
from jaxspeech.train import registry


def _commands(parser: argparse.ArgumentParser, prefix=()):
  """Every leaf command's words, e.g. ("llasa", "synthesize")."""
  subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # pylint: disable=protected-access
  if not subparsers:
    yield prefix
    return
  for name, child in subparsers[0].choices.items():
    yield from _commands(child, (*prefix, name))


COMMANDS = sorted(_commands(cli.parser(cli._families())))  # pylint: disable=protected-access


@pytest.fixture(autouse=True)
def _no_reexec(monkeypatch):
  monkeypatch.setenv("JAXSPEECH_MALLOC_TUNING", "0")  # `train` and `eval` would re-execute the test process


def test_every_family_with_a_cli_module_has_its_verbs_at_the_top_level():
  families = {name for name in registry.FAMILIES if registry.part(name, "cli") is not None}
  assert families == {"codec", "llasa", "dit", "asr"}
  for family in families:
    assert any(c[0] == family and len(c) == 2 for c in COMMANDS), family
  assert ("llasa", "synthesize") in COMMANDS and ("dit", "synthesize") in COMMANDS


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_help_lists_each_commands_flags(words, capsys):
  assert cli.main([*words, "--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: jaxspeech {' '.join(words)}") and "options:" in out


@pytest.mark.parametrize("argv, says", [
    (["train", "--config=configs/ast.py:tiny", "--workdir=/tmp/x", "--config.train.stepz=3"],
     "jaxspeech train: error: no config field '--config.train.stepz' in the config file (did you mean 'steps'?)"),
    (["eval", "--config=configs/nope.py", "--workdir=/tmp/x"], "jaxspeech eval: error: no config file 'configs/nope.py'"),
    (["train", "--config=configs/ast.py:tiny", "--workdir=/tmp/x", "--stepz=3"],
     "jaxspeech train: error: unrecognized arguments: --stepz=3"),
    (["data", "info"], "jaxspeech data info: error: the following arguments are required: path"),
    (["synthesize", "--text", "hi", "--out", "x.wav"], "jaxspeech: error: synthesize takes one model: --lm WORKDIR"),
])
def test_bad_input_is_one_line(argv, says, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(says) and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("words, flags", [
    (("plan",), ["--config FILE.py[:VARIANT]", "--mesh MESH", "--topology TOPOLOGY", "--device", "--json",
                 "--extrapolate"]),
    (("train",), ["--config FILE.py[:VARIANT]", "--workdir WORKDIR", "--num_processes", "--verbosity"]),
    (("eval",), ["--config FILE.py[:VARIANT]", "--workdir WORKDIR", "--verbosity"]),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_help_of_the_main_commands_shows_their_flags(words, flags, capsys):
  assert cli.main([*words, "--help"]) == 0
  out = capsys.readouterr().out
  assert [f for f in flags if f not in out] == [], out


def test_unknown_config_field_is_one_clean_line(tmp_path, capsys):
  assert cli.main(["train", "--config=configs/ast.py:tiny", f"--workdir={tmp_path / 'run'}",
                   "--config.train.nope=1"]) == 2
  err = capsys.readouterr().err
  assert err == "jaxspeech train: error: no config field '--config.train.nope' in the config file\n", err
  assert not (tmp_path / "run").exists()


def test_convert_names_an_unknown_flag_before_the_missing_ones(capsys):
  with pytest.raises(SystemExit) as e:  # the family's own parser exits, as `jaxspeech convert` does
    cli.main(["convert", "ast", "--too", "hf"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.splitlines()[-1] == "jaxspeech convert ast: error: unrecognized arguments: --too", err


def test_plan_refuses_a_bad_mesh_at_once(capsys):
  start = time.monotonic()
  assert cli.main(["plan", "--config=configs/ast.py:tiny", "--mesh", "fsdb=2"]) == 2
  took = time.monotonic() - start
  err = capsys.readouterr().err
  assert err.startswith("jaxspeech plan: error: --mesh takes axis=size pairs") and "'fsdb=2'" in err, err
  assert len(err.strip().splitlines()) == 1 and took < 5, (took, err)
