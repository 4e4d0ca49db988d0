"""What users read names paths in the repository or the workdir, never one machine's checkout or artifacts;
notebooks are saved without outputs (which would carry such paths and stale numbers)."""

import glob
import json
import os
import re

import pytest

from tests.helpers import ROOT

# A path that starts at the root of one machine's file system: a checkout, a home, a scratch or temp dir.
MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:work|tmp|root|home|Users|mnt|scratch|private|var/folders)(?:/|\b)")
READ = ["README.md", "DEVELOPERS.md", "benchmarks/RESULTS.md", *sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
NOTEBOOKS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def _machine_paths(text: str) -> list[str]:
  return [line.strip() for line in text.splitlines() if MACHINE_PATH.search(line)]


def test_the_pattern_finds_machine_paths_and_leaves_others():
  found = ["see /work/main/workdirs/ast", "`/tmp/pytest-of-root/x`", "--src=/root/ckpt", "(/home/me/data)",
           "cd /tmp && ls"]
  kept = ["workdirs/ast_tiny/checkpoints", "~/jaxspeech-runs/llasa", "gs://bucket/tmp/run", "/proc/loadavg",
          "$SHARED/runs/logs", "https://example.org/home/x", "--workdir=/abs/DIR", "a/work/b"]
  assert [t for t in found if _machine_paths(t)] == found
  assert [t for t in kept if _machine_paths(t)] == []


@pytest.mark.parametrize("name", READ)
def test_docs_quote_no_machine_path(name):
  with open(os.path.join(ROOT, name), encoding="utf-8") as f:
    assert _machine_paths(f.read()) == [], f"{name}: write paths relative to the repository or the workdir"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_saved_without_outputs_or_machine_paths(name):
  with open(os.path.join(ROOT, name), encoding="utf-8") as f:
    notebook = json.load(f)
  code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
  assert code, f"{name} has no code"
  assert [c.get("outputs") for c in code if c.get("outputs") or c.get("execution_count")] == [], \
      f"{name}: clear its outputs before saving"
  source = "\n".join("".join(c["source"]) for c in notebook["cells"])
  assert _machine_paths(source) == [], name
