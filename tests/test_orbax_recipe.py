"""docs/training.md's "Reading a checkpoint with plain Orbax" block, exactly as written there, restores a run's
params and EMA without jaxspeech: a 2-step run saved on 8 fake devices, read in a 1-device process that never
imports jaxspeech, against `Workdir.read_params`."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from jaxspeech.train import trainer
from jaxspeech.workdir import Workdir
from tests.helpers import ROOT, tiny_ast

SECTION = "## Reading a checkpoint with plain Orbax"
DOC_WORKDIR = '"workdirs/ast_tiny"'
# what the test adds after the recipe: its results to a file, and proof that jaxspeech stayed out
SAVE = """
import sys
assert not [m for m in sys.modules if m.split(".")[0] == "jaxspeech"], "the recipe imported jaxspeech"
np.savez(sys.argv[1], step=step, **{"params/" + k: v for k, v in params.items()},
         **{"ema/" + k: v for k, v in ema.items()})
"""


def recipe() -> str:
  with open(os.path.join(ROOT, "docs", "training.md")) as f:
    text = f.read()
  section = text[text.index(SECTION):]
  section = section[:section.index("\n## ", len(SECTION))]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1 and DOC_WORKDIR in blocks[0]
  return blocks[0]


@pytest.mark.slow  # ~75 s on 2 cores: the 2-step run is most of it
def test_the_documented_recipe_restores_params_and_ema_without_jaxspeech(corpus_path, tmp_path):
  cfg = tiny_ast(corpus_path, steps=2, checkpoint_every=1, ema_decay=0.9)
  trainer.Trainer(cfg, str(tmp_path / "run")).train()
  script = tmp_path / "recipe.py"
  script.write_text(recipe().replace(DOC_WORKDIR, repr(str(tmp_path / "run"))) + SAVE)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  result = subprocess.run([sys.executable, str(script), str(tmp_path / "out.npz")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / "out.npz")
  workdir = Workdir(str(tmp_path / "run"))
  for weights in ("params", "ema"):
    want = workdir.read_params("ast", weights=weights)
    assert int(out["step"]) == want.step == 2
    got = {k.removeprefix(f"{weights}/"): out[k] for k in out.files if k.startswith(f"{weights}/")}
    assert got.keys() == want.params.keys()
    for k, v in want.params.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)  # exact: the same bytes from the same file
  assert not np.array_equal(out["params/head.kernel"], out["ema/head.kernel"])
