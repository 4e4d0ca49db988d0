"""Scaling-law sweeps: the fits recover known laws; the runner resumes, retries, records failures and
divergence; SLURM and xpk dry runs print the exact script and commands; one real AST run end to end.

Runner tests put a stand-in for the trainer *process* in the sweep's `command` (the runner is what is
under test): it writes metrics.jsonl the way `jaxspeech train` does, fails, diverges or spikes on request.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jaxspeech.sweep import backends, cli as sweep_cli, counts, design, fit, report
from jaxspeech.train import config, registry, state
from tests.helpers import ROOT

# Chinchilla's fitted law (Hoffmann et al. 2022, approach 3).
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _law(n, d):
  return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def test_law_fit_recovers_known_parameters():
  rng = np.random.default_rng(0)
  n, d = (x.ravel() for x in np.meshgrid(np.logspace(6, 10, 7), np.logspace(8, 12, 7)))
  loss = _law(n, d) * np.exp(rng.normal(0.0, 0.005, n.shape))   # 0.5 % multiplicative noise
  law, starts = fit.fit_law(n, d, loss, starts=32)
  assert abs(law["alpha"] - TRUE["alpha"]) < 0.02 and abs(law["beta"] - TRUE["beta"]) < 0.02, law
  assert abs(law["E"] / TRUE["E"] - 1) < 0.05, law
  assert abs(np.log(law["A"] / TRUE["A"])) < 0.25 and abs(np.log(law["B"] / TRUE["B"])) < 0.25, law
  true_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
  assert abs(law["a"] - true_a) < 0.02 and abs(law["a"] + law["b"] - 1) < 1e-12
  ci, used = fit.law_bootstrap(n, d, loss, starts, 20, np.random.default_rng(1))
  assert used == 20
  for key in ("alpha", "beta", "a", "b"):
    low, high = ci[key]
    assert low <= law[key] + 1e-9 and law[key] - 1e-9 <= high and high - low < 0.05, (key, ci[key], law[key])


def _isoflop_rows(noise: float, seed: int = 0):
  """An IsoFLOP design on the known law: 5 budgets, 7 sizes from N_opt/8 to 8 N_opt each."""
  a, b = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), TRUE["alpha"] / (TRUE["alpha"] + TRUE["beta"])
  g = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / (TRUE["alpha"] + TRUE["beta"]))
  rng = np.random.default_rng(seed)
  rows = []
  for budget in np.logspace(18, 22, 5):
    for factor in np.logspace(-np.log10(8), np.log10(8), 7):
      n = g * (budget / 6) ** a * factor
      d = budget / (6 * n)
      loss = float(_law(n, d) * np.exp(rng.normal(0.0, noise)))
      rows.append(dict(name=f"C{budget:.0e}-{factor:.2f}", status="done", params=n, tokens=d, compute=budget,
                       flops=budget, budget=budget, steps=1, final_eval_loss=loss, min_eval_loss=loss,
                       wall_time=1.0, attempts=1, error=None))
  return rows, a, b


def test_isoflop_minima_recover_the_compute_optimal_exponents(tmp_path):
  rows, a, b = _isoflop_rows(noise=0.002)
  rows.append(dict(rows[0], name="diverged-run", status="diverged", final_eval_loss=None,
                   error="loss spiked: smoothed train loss 9 at step 40, up from 2 at step 20"))
  result = fit.fit_sweep(rows, bootstrap=30, starts=32)
  iso = result["isoflop"]
  # The parabola in log N only approximates L(N, C/6N) near its minimum: 0.02 covers that and the noise.
  assert abs(iso["a"] - a) < 0.02 and abs(iso["b"] - b) < 0.02, (iso["a"], iso["b"], a, b)
  assert all(entry["in_range"] for entry in iso["budgets"])
  assert iso["bootstrap_used"] == 30 and iso["ci"]["a"][0] <= iso["a"] <= iso["ci"]["a"][1]
  assert abs(result["law"]["alpha"] - TRUE["alpha"]) < 0.03 and abs(result["law"]["beta"] - TRUE["beta"]) < 0.03
  assert [e["name"] for e in result["excluded"]] == ["diverged-run"]

  paths = report.write(str(tmp_path), "synthetic", rows, result)
  for name in ("report.md", "fit.json", *report.PLOTS):
    assert str(tmp_path / name) in paths
    assert (tmp_path / name).stat().st_size > 0
  with open(tmp_path / "report.md") as f:
    text = f.read()
  assert "| α |" in text and "## IsoFLOP minima" in text and "![IsoFLOP curves](isoflop.png)" in text
  assert "- diverged-run (diverged): loss spiked" in text
  with open(tmp_path / "fit.json") as f:
    assert json.load(f)["isoflop"]["a"] == pytest.approx(iso["a"])


FAKE_TRAIN = '''
"""Stands in for `jaxspeech train`: metrics.jsonl as the trainer writes it; fails or diverges on request."""
import json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
cfg = {k[len("--config."):]: v for k, v in args.items() if k.startswith("--config.")}
workdir = args["--workdir"]
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "invocations"), "a") as f:
  f.write(f"{os.getpid()}\\n")
with open(os.path.join(workdir, "invocations")) as f:
  invocation = len(f.read().split())
mode, sleep = cfg.get("fake.mode", "ok"), float(cfg.get("fake.sleep", "0"))
steps, every, hidden = int(cfg["train.steps"]), int(cfg["train.eval_every"]), int(cfg["model.hidden"])
if mode == "fail_always" or (mode == "fail_once" and invocation == 1):
  print("Traceback (most recent call last):\\nRuntimeError: simulated crash", file=sys.stderr)
  sys.exit(1)
with open(os.path.join(workdir, "metrics.jsonl"), "a") as metrics:
  for step in range(1, steps + 1):
    time.sleep(sleep)
    if mode == "nan" and step == 3:
      print("jaxspeech train: error: loss or gradient became non-finite at step 3 (loss=nan, grad_norm=nan)",
            file=sys.stderr)
      sys.exit(2)
    loss = 1.0 + 10.0 / hidden + 1.0 / step
    if mode == "spike" and step > steps // 2:
      loss = 25.0
    metrics.write(json.dumps({"step": step, "loss": loss}) + "\\n")
    if step % every == 0 or step == steps:
      metrics.write(json.dumps({"step": step, "eval/loss": loss + 0.1}) + "\\n")
    metrics.flush()
print(f"train done: eval/loss {loss + 0.1:.4f}")
'''

FAKE_CONFIG = '''
import importlib.util
import ml_collections

def get_config(variant="tiny"):
  spec = importlib.util.spec_from_file_location("ast_config", {ast!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(variant)
  cfg.fake = ml_collections.ConfigDict(dict(mode="ok", sleep=0.0))
  return cfg
'''

SWEEP = '''
from jaxspeech.sweep import design

def get_sweep():
  return design.Sweep(
      name="test",
      train_config={train_config!r},
      command=({python!r}, {fake!r}),
      overrides={overrides!r},
      rule=lambda w, d: {{"model.hidden": w, "model.layers": d, "model.heads": 1, "model.mlp": 2 * w}},
      design={design},
      evals_per_run=2,
      slurm=design.Slurm(directives=("--time=00:30:00", "--gres=gpu:1"), setup=("module load cuda/12.4",)),
      xpk=design.Xpk(cluster="c1", project="p1", zone="z1", device_type="v5p-8", num_slices=2,
                     docker_image="img:1", args=("--storage=sweeps",)))
'''


def _sweep_config(tmp_path, design_src, overrides=None, train_config=None):
  fake = tmp_path / "fake_train.py"
  fake.write_text(FAKE_TRAIN)
  fake_config = tmp_path / "fake_ast.py"
  fake_config.write_text(FAKE_CONFIG.format(ast=os.path.join(ROOT, "configs", "ast.py")))
  path = tmp_path / "sweep_test.py"
  path.write_text(SWEEP.format(train_config=train_config or f"{fake_config}:tiny", python=sys.executable,
                               fake=str(fake), overrides=overrides or {}, design=design_src))
  return str(path)


def _rows(sweep_dir):
  db = sqlite3.connect(os.path.join(sweep_dir, "sweep.db"))
  db.row_factory = sqlite3.Row
  rows = {r["name"]: dict(r) for r in db.execute("SELECT * FROM runs")}
  db.close()
  return rows


def _invocations(sweep_dir, name):
  path = os.path.join(sweep_dir, "runs", name, "invocations")
  return len(open(path).read().split()) if os.path.exists(path) else 0


GRID_SIZES = ('design.Grid(axes={"train.steps": [10, 12]}, '
              'sizes=[design.Size(16, 1), design.Size(32, 1), design.Size(48, 1)])')
GRID_SMALL = 'design.Grid(axes={"train.steps": [8, 10]}, sizes=[design.Size(16, 1), design.Size(32, 1)])'


def test_killed_runner_resumes_without_redoing_finished_runs(tmp_path):
  config = _sweep_config(tmp_path, GRID_SMALL, overrides={"fake.sleep": 0.1})
  sweep_dir = str(tmp_path / "sweep")
  command = [sys.executable, "-m", "jaxspeech.cli", "sweep", "run", f"--config={config}", f"--workdir={sweep_dir}"]
  runner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while True:
    assert time.time() < deadline and runner.poll() is None, "the runner finished or hung before the kill"
    try:
      rows = _rows(sweep_dir)
    except sqlite3.OperationalError:  # not created yet
      rows = {}
    statuses = [r["status"] for r in rows.values()]
    running = [n for n, r in rows.items() if r["status"] == "running"]
    if statuses.count("done") >= 2 and running and os.path.exists(
        os.path.join(sweep_dir, "runs", running[0], "metrics.jsonl")):  # that trainer is under way
      break
    time.sleep(0.05)
  runner.send_signal(signal.SIGKILL)
  runner.wait()
  rows = _rows(sweep_dir)
  finished = {n for n, r in rows.items() if r["status"] == "done"}
  in_flight = {n: r["pid"] for n, r in rows.items() if r["status"] == "running"}
  assert len(finished) >= 2 and len(in_flight) == 1 and len(rows) == 4
  # The in-flight trainer got SIGTERM when its runner died (PR_SET_PDEATHSIG), as a preempted one would.
  pid = next(iter(in_flight.values()))
  deadline = time.time() + 10
  while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
    time.sleep(0.05)
  assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"

  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}"]) == 0
  rows = _rows(sweep_dir)
  assert {r["status"] for r in rows.values()} == {"done"}
  for name in rows:
    expected = 2 if name in in_flight else 1
    assert _invocations(sweep_dir, name) == expected, (name, finished, in_flight)
  assert all(r["attempts"] == 1 and r["final_eval_loss"] is not None for r in rows.values())
  # A third run does nothing.
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}"]) == 0
  assert sum(_invocations(sweep_dir, n) for n in rows) == len(rows) + 1


def test_failures_are_retried_once_and_recorded_and_divergence_is_kept(tmp_path, capsys):
  modes = '["ok", "fail_once", "fail_always", "nan", "spike"]'
  config = _sweep_config(tmp_path, f'design.Grid(axes={{"fake.mode": {modes}}}, sizes=[design.Size(16, 1)])',
                         overrides={"train.steps": 20})
  sweep_dir = str(tmp_path / "sweep")
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}", "--parallel=2"]) == 1
  rows = _rows(sweep_dir)
  by_mode = {json.loads(r["overrides"])["fake.mode"]: r for r in rows.values()}
  assert by_mode["ok"]["status"] == "done" and by_mode["ok"]["attempts"] == 1
  assert by_mode["ok"]["final_eval_loss"] == pytest.approx(1.0 + 10 / 16 + 1 / 20 + 0.1, abs=1e-12)
  assert by_mode["fail_once"]["status"] == "done" and by_mode["fail_once"]["attempts"] == 2
  failed = by_mode["fail_always"]
  assert failed["status"] == "failed" and failed["attempts"] == 2
  assert failed["error"] == "exit code 1: RuntimeError: simulated crash"
  assert by_mode["nan"]["status"] == "diverged" and "non-finite at step 3" in by_mode["nan"]["error"]
  assert by_mode["spike"]["status"] == "diverged" and by_mode["spike"]["error"].startswith("loss spiked")
  assert by_mode["spike"]["final_eval_loss"] == pytest.approx(25.1)
  for r in rows.values():
    assert r["wall_time"] > 0 and r["params"] > 0 and r["tokens"] == 20 * 32 * 128

  # A rerun retries nothing: failed and diverged runs stay as they are.
  calls = {n: _invocations(sweep_dir, n) for n in rows}
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}"]) == 1
  assert {n: _invocations(sweep_dir, n) for n in rows} == calls
  capsys.readouterr()
  assert sweep_cli.main(["status", f"--workdir={sweep_dir}"]) == 0
  out = capsys.readouterr().out
  assert "status: 2 diverged, 2 done, 1 failed" in out
  # The fit reports every run it left out, with the reason.
  assert sweep_cli.main(["fit", f"--workdir={sweep_dir}", "--bootstrap=0"]) == 0
  text = open(os.path.join(sweep_dir, "report.md")).read()
  assert f"- {by_mode['fail_always']['name']} (failed): exit code 1: RuntimeError: simulated crash" in text
  assert f"- {by_mode['nan']['name']} (diverged): jaxspeech train: error: loss or gradient became non-finite" in text
  assert "Not fitted: 2 usable runs" in text


def test_array_spec():
  assert backends._array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"  # pylint: disable=protected-access
  assert backends._array_spec([3]) == "3"  # pylint: disable=protected-access


def test_slurm_and_xpk_dry_runs_print_the_exact_script_and_commands(tmp_path, capsys):
  config = _sweep_config(tmp_path, GRID_SIZES)
  sweep_dir = str(tmp_path / "sweep")
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}", "--backend=slurm", "--parallel=2",
                         "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert not os.path.exists(sweep_dir)  # a dry run writes nothing
  script = out[out.index("#!/bin/bash"):]
  assert script == textwrap.dedent(f"""\
      #!/bin/bash
      #SBATCH --job-name=jaxspeech-sweep-test
      #SBATCH --array=0-5%2
      #SBATCH --output={sweep_dir}/slurm/%A_%a.log
      #SBATCH --time=00:30:00
      #SBATCH --gres=gpu:1
      set -euo pipefail
      cd {ROOT}
      module load cuda/12.4
      exec {sys.executable} -m jaxspeech.cli sweep task --workdir={sweep_dir} --index="$SLURM_ARRAY_TASK_ID"
      """)
  assert "   0  w16-d1-steps=10" in out and "   5  w48-d1-steps=12" in out

  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}", "--backend=xpk", "--dry-run"]) == 0
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("xpk ")]
  assert len(lines) == 6
  assert lines[0] == ("xpk workload create --cluster=c1 --project=p1 --zone=z1 --workload=test-000 "
                      "--docker-image=img:1 --device-type=v5p-8 --num-slices=2 --storage=sweeps "
                      f"'--command=jaxspeech sweep task --workdir={sweep_dir} --index=0'")
  assert lines[5].endswith(f"--workload=test-005 --docker-image=img:1 --device-type=v5p-8 --num-slices=2 "
                           f"--storage=sweeps '--command=jaxspeech sweep task --workdir={sweep_dir} --index=5'")


def _stub_sbatch(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/sbatch_args\necho '4242;cluster'\n")
  (bin_dir / "sbatch").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_slurm_submission_then_array_tasks_then_collection(tmp_path, monkeypatch, capsys):
  """sbatch is stubbed; the array tasks run here, one `sweep task` each; `status` folds in their results."""
  _stub_sbatch(tmp_path, monkeypatch)
  config = _sweep_config(tmp_path, 'design.Grid(axes={"fake.mode": ["ok", "fail_always"]}, sizes=[design.Size(16, 1)])',
                         overrides={"train.steps": 6})
  sweep_dir = str(tmp_path / "sweep")
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}", "--backend=slurm"]) == 0
  script = os.path.join(sweep_dir, "slurm", "array.sbatch")
  assert open(tmp_path / "sbatch_args").read().split() == ["--parsable", script]
  assert "#SBATCH --array=0-1\n" in open(script).read()
  assert {(r["status"], r["job"]) for r in _rows(sweep_dir).values()} == {("submitted", "4242_0"),
                                                                          ("submitted", "4242_1")}
  # Rerunning while the array is out submits nothing new.
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}", "--backend=slurm"]) == 0
  assert {r["status"] for r in _rows(sweep_dir).values()} == {"submitted"}
  assert sweep_cli.main(["task", f"--workdir={sweep_dir}", "--index=0"]) == 0
  assert sweep_cli.main(["task", f"--workdir={sweep_dir}", "--index=1"]) == 1
  capsys.readouterr()
  assert sweep_cli.main(["status", f"--workdir={sweep_dir}"]) == 0
  rows = {json.loads(r["overrides"])["fake.mode"]: r for r in _rows(sweep_dir).values()}
  assert rows["ok"]["status"] == "done" and rows["ok"]["final_eval_loss"] is not None
  assert rows["fail_always"]["status"] == "failed" and rows["fail_always"]["attempts"] == 2
  assert _invocations(sweep_dir, rows["fail_always"]["name"]) == 2


def test_preempted_task_is_recorded_as_interrupted_and_submitted_again(tmp_path, monkeypatch):
  _stub_sbatch(tmp_path, monkeypatch)
  config = _sweep_config(tmp_path, 'design.Grid(axes={"train.steps": [100]}, sizes=[design.Size(16, 1)])',
                         overrides={"fake.sleep": 0.1})
  sweep_dir = str(tmp_path / "sweep")
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}", "--backend=slurm"]) == 0
  (name,) = _rows(sweep_dir)
  task = subprocess.Popen([sys.executable, "-m", "jaxspeech.cli", "sweep", "task", f"--workdir={sweep_dir}",
                           "--index=0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not os.path.exists(os.path.join(sweep_dir, "runs", name, "metrics.jsonl")):
    assert time.time() < deadline and task.poll() is None
    time.sleep(0.05)
  task.send_signal(signal.SIGTERM)  # SLURM preempting the task
  out, _ = task.communicate(timeout=60)
  assert task.returncode == 0 and f"{name}: interrupted" in out
  with open(os.path.join(sweep_dir, "runs", name, "result.json")) as f:
    assert json.load(f)["status"] == "interrupted"
  assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}", "--backend=slurm"]) == 0
  assert _rows(sweep_dir)[name]["status"] == "submitted" and _rows(sweep_dir)[name]["attempts"] == 0


def test_isoflop_plan_trains_each_size_on_c_over_6n_tokens():
  sweep = design.Sweep(
      name="plan", train_config=os.path.join(ROOT, "configs", "ast.py:tiny"),
      overrides={"model.max_frames": 128, "train.batch_size": 32},
      rule=lambda w, d: {"model.hidden": w, "model.layers": d, "model.heads": 1, "model.mlp": 4 * w},
      design=design.IsoFlop(budgets=[1e10, 1e11], sizes=[design.Size(8, 1), design.Size(64, 2)], min_steps=20))
  runs, notes = design.plan(sweep)
  assert [r.name for r in runs] == ["C1e10-w8-d1", "C1e11-w8-d1", "C1e11-w64-d2"]
  assert notes == ["left out C1e10-w64-d2: N=122,064 needs 7 steps (allowed 20..any)"]
  for run in runs:
    assert run.tokens == run.steps * 32 * 64          # 8 × 8 patches of a 128-frame fbank, batch 32
    assert abs(run.compute / run.coords["budget"] - 1) < 0.5 / run.steps + 1e-9  # steps are rounded
    assert run.overrides["train.eval_every"] == -(-run.steps // 4)
  assert runs[0].params == 3_648


@pytest.mark.parametrize("spec, per_step, frozen", [
    ("codec.py:tiny", 8 * 20, {}),                  # 8 crops of 0.4 s at 16 kHz, 20 codes each (hop 320)
    ("codec.py:tiny_semantic", 8 * 20, {"semantic_model": 39_216}),  # the w2v-BERT teacher trains not
    ("vocoder.py:tiny", 8 * 37, {}),                # 8 crops of 0.4 s at 24 kHz, 37 hops of 256
    ("ast.py:lora", 16 * 128, {"lora": 579_712}),   # 8 × 16 patches; LoRA trains, the backbone does not
])
def test_every_family_declares_its_tokens_and_n_counts_only_params_that_train(spec, per_step, frozen):
  """Llasa and DiT measure theirs from the data: tests/test_sweep_families.py."""
  sweep = design.Sweep(name="one", train_config=os.path.join(ROOT, "configs", spec),
                       design=design.Grid(axes={"train.steps": [3]}))
  (run,), notes = design.plan(sweep)
  cfg = config.load(sweep.train_config, [])
  _, params, _ = state.abstract_model(registry.get(cfg.family), cfg)
  left_out = {}
  for module, n in counts.frozen_params(cfg).items():
    left_out[module.split(".")[0]] = left_out.get(module.split(".")[0], 0) + n
  assert run.tokens == 3 * per_step
  assert left_out == frozen
  assert run.params == state.param_count(params) - sum(frozen.values())
  assert bool(frozen) == any(n.startswith("N counts the params that train; frozen and left out:") for n in notes)


def test_one_real_ast_run_through_the_local_backend(tmp_path, corpus_path):
  overrides = {"data.path": corpus_path, "model.max_frames": 64, "train.batch_size": 8, "train.log_every": 1,
               "train.checkpoint_every": 100, "train.best_metric": "", "optim.warmup_steps": 1}
  config = tmp_path / "real.py"
  config.write_text(textwrap.dedent(f"""
      from jaxspeech.sweep import design

      def get_sweep():
        return design.Sweep(
            name="real", train_config="configs/ast.py:tiny", overrides={overrides!r},
            rule=lambda w, d: {{"model.hidden": w, "model.layers": d, "model.heads": 2, "model.mlp": 2 * w}},
            design=design.Grid(axes={{"train.steps": [6]}}, sizes=[design.Size(32, 1)]), evals_per_run=1)
      """))
  sweep_dir = str(tmp_path / "sweep")
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    assert sweep_cli.main(["run", f"--config={config}", f"--workdir={sweep_dir}"]) == 0
  finally:
    os.chdir(cwd)
  (row,) = _rows(sweep_dir).values()
  assert row["status"] == "done", row
  assert 0 < row["final_eval_loss"] < 10 and row["final_eval_loss"] == row["min_eval_loss"]
  assert row["tokens"] == 6 * 8 * 8 * 4 and row["steps"] == 6
  metrics = [json.loads(l) for l in open(os.path.join(sweep_dir, "runs", row["name"], "metrics.jsonl"))]
  assert [m["step"] for m in metrics if "eval/loss" in m] == [6]
