"""The cluster launchers' dry runs: the exact commands, parsed back into argv lists, and their input checks."""

import importlib.util
import os
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT

TRAIN = ["jaxspeech", "train", "--config=configs/ast.py:base", "--workdir=gs://bucket/ast"]


def _load(name):
  spec = importlib.util.spec_from_file_location(f"launch_{name}", os.path.join(ROOT, "launch", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu_vm, xpk, slurm, common = _load("tpu_vm"), _load("xpk"), _load("slurm"), _load("common")


def _dry_run(module, capsys, *argv) -> list[list[str]]:
  assert module.main([*argv, "--dry-run"] if "--" not in argv else
                     [*argv[:argv.index("--")], "--dry-run", *argv[argv.index("--"):]]) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def _error(module, capsys, *argv) -> str:
  with pytest.raises(SystemExit) as e:
    module.main(list(argv))
  assert e.value.code == 2
  return capsys.readouterr().err


WHERE = ["--name", "pod", "--zone", "us-east5-a", "--project", "proj"]
LOCATION = ["--zone=us-east5-a", "--project=proj"]


def test_tpu_vm_single_slice(capsys):
  assert _dry_run(tpu_vm, capsys, "create", *WHERE, "--accelerator", "v5p-64") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod", *LOCATION, "--accelerator-type=v5p-64",
       "--version=v2-alpha-tpuv5"]]
  mkdir, archive, scp, setup, start = _dry_run(tpu_vm, capsys, "run", *WHERE, "--run", "r1", "--env", "A=b c", "--",
                                              *TRAIN)
  assert mkdir == ["mkdir", "-p", os.path.relpath(os.path.join(ROOT, ".cache"))]
  assert archive == ["git", "-C", ROOT, "archive", "--format=tar.gz", "--output=.cache/jaxspeech-r1-src.tar.gz", "HEAD"]
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", os.path.relpath(os.path.join(ROOT, ".cache",
                                                                                        "jaxspeech-r1-src.tar.gz")),
                 "pod:jaxspeech-src.tar.gz", "--worker=all", *LOCATION]
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--worker=all", *LOCATION, "--command"]
  assert setup[:-1] == ssh and start[:-1] == ssh
  assert setup[-1].split(" && ") == [
      "set -e", "rm -rf ~/jaxspeech", "mkdir -p ~/jaxspeech", "tar -xzf ~/jaxspeech-src.tar.gz -C ~/jaxspeech",
      "python3 -m venv ~/jaxspeech-venv", "~/jaxspeech-venv/bin/pip install -q -U pip",
      '~/jaxspeech-venv/bin/pip install -q -e ~/jaxspeech "jax[tpu]"']
  assert start[-1].split(" && ") == [
      "mkdir -p ~/jaxspeech-runs/r1", "cd ~/jaxspeech", "export PATH=~/jaxspeech-venv/bin:$PATH", "export A='b c'",
      f"(setsid nohup {shlex.join(TRAIN)} > ~/jaxspeech-runs/r1/$(hostname).log 2>&1 < /dev/null "
      "& echo $! > ~/jaxspeech-runs/r1/$(hostname).pid)"]
  assert _dry_run(tpu_vm, capsys, "logs", *WHERE, "--run", "r1", "--dest", "logs/r1") == [
      ["mkdir", "-p", "logs/r1"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", "pod:jaxspeech-runs/r1/*.log", "logs/r1", "--worker=all",
       *LOCATION]]
  assert _dry_run(tpu_vm, capsys, "stop", *WHERE, "--run", "r1") == [
      ssh + ["kill -TERM $(cat ~/jaxspeech-runs/r1/$(hostname).pid)"]]
  assert _dry_run(tpu_vm, capsys, "delete", *WHERE) == [
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod", *LOCATION, "--quiet"]]


def test_tpu_vm_multi_slice(capsys):
  slices = [*WHERE, "--num-slices", "4"]
  assert _dry_run(tpu_vm, capsys, "create", *slices, "--accelerator", "v6e-256", "--spot") == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "pod", *LOCATION, "--accelerator-type=v6e-256",
       "--runtime-version=v2-alpha-tpuv6e", "--node-count=4", "--node-prefix=pod", "--spot"]]
  setup, start = _dry_run(tpu_vm, capsys, "run", *slices, "--run", "r2", "--repo", "https://git.example/js.git",
                          "--branch", "main", "--", *TRAIN)
  ssh = ["gcloud", "compute", "tpus", "queued-resources", "ssh", "pod", "--node=all", "--worker=all", *LOCATION,
         "--command"]
  assert setup[:-1] == ssh and start[:-1] == ssh
  assert "git clone --depth=1 --branch=main https://git.example/js.git ~/jaxspeech" in setup[-1].split(" && ")
  # The trainer's own command, with data parallelism across the 4 slices.
  assert shlex.split(start[-1].split("nohup ")[1].split(" >")[0]) == TRAIN + ["--config.mesh.dcn_data=4"]
  assert _dry_run(tpu_vm, capsys, "delete", *slices) == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "pod", *LOCATION, "--force", "--quiet"]]
  # A dcn axis the user chose is kept as it is.
  (start,) = _dry_run(tpu_vm, capsys, "run", *slices, "--run", "r", "--no-setup", "--", *TRAIN,
                      "--config.mesh.dcn_fsdp=4")
  assert "dcn_data" not in start[-1] and "--config.mesh.dcn_fsdp=4" in start[-1]


def test_tpu_vm_rejects_bad_input(capsys):
  assert "unknown TPU accelerator 'v9-8'" in _error(tpu_vm, capsys, "create", *WHERE, "--accelerator", "v9-8")
  assert "required: --zone" in _error(tpu_vm, capsys, "create", "--name", "pod", "--accelerator", "v5p-8")
  assert "--branch needs --repo" in _error(tpu_vm, capsys, "run", *WHERE, "--run", "r", "--branch", "b", "--", *TRAIN)
  assert "give the training command after --" in _error(tpu_vm, capsys, "run", *WHERE, "--run", "r")
  assert "must be at least 1, got 0" in _error(tpu_vm, capsys, "delete", *WHERE, "--num-slices", "0")
  assert "--env takes NAME=VALUE" in _error(tpu_vm, capsys, "run", *WHERE, "--run", "r", "--env", "1X=2", "--",
                                            *TRAIN)


def test_xpk_tpu_and_gpu(capsys):
  base = ["--cluster", "c1", "--workload", "ast-base", "--project", "proj", "--zone", "us-east5"]
  (tpu,) = _dry_run(xpk, capsys, *base, "--tpu-type", "v5p-64", "--num-slices", "2", "--docker-image", "gcr.io/p/js",
                    "--", *TRAIN)
  assert tpu == ["xpk", "workload", "create", "--cluster=c1", "--workload=ast-base", "--project=proj",
                 "--zone=us-east5", "--tpu-type=v5p-64", "--num-slices=2", "--docker-image=gcr.io/p/js",
                 "--command", shlex.join(TRAIN + ["--config.mesh.dcn_data=2"])]
  (gpu,) = _dry_run(xpk, capsys, *base, "--device-type", "h100-mega-80gb-8", "--num-nodes", "8",
                    "--base-docker-image", "nvcr.io/nvidia/jax:latest", "--priority", "high", "--", *TRAIN)
  assert gpu[:-1] == ["xpk", "workload", "create", "--cluster=c1", "--workload=ast-base", "--project=proj",
                      "--zone=us-east5", "--device-type=h100-mega-80gb-8", "--num-nodes=8",
                      "--base-docker-image=nvcr.io/nvidia/jax:latest", "--priority=high", "--command"]
  join, env, train = gpu[-1].split(" && ")
  assert shlex.split(join) == ["export", "JAXSPEECH_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS:$JAX_COORDINATOR_PORT",
                               "JAXSPEECH_NUM_PROCESSES=$NNODES", "JAXSPEECH_PROCESS_ID=$NODE_RANK"]
  assert shlex.split(env) == ["export", "XLA_FLAGS=" + " ".join(common.GPU_XLA_FLAGS),
                              "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"]
  assert shlex.split(train) == TRAIN


def test_xpk_rejects_bad_input(capsys):
  base = ["--cluster", "c1", "--workload", "w", "--docker-image", "img"]
  assert "unknown GPU device type 'h100'" in _error(xpk, capsys, *base, "--device-type", "h100", "--", *TRAIN)
  assert "unknown TPU accelerator 'tpu-64'" in _error(xpk, capsys, *base, "--tpu-type", "tpu-64", "--", *TRAIN)
  assert "one of the arguments --tpu-type --device-type is required" in _error(xpk, capsys, *base, "--", *TRAIN)
  assert "--num-slices is for TPUs" in _error(xpk, capsys, *base, "--device-type", "h100-80gb-8", "--num-slices", "2",
                                             "--", *TRAIN)
  assert "required: --cluster" in _error(xpk, capsys, "--workload", "w", "--docker-image", "i", "--tpu-type", "v4-8")


def _script(capsys, *argv) -> tuple[list[str], list[str]]:
  assert slurm.main([*argv, "--dry-run", "--", *TRAIN]) == 0
  lines = capsys.readouterr().out.splitlines()
  return lines[:-1], shlex.split(lines[-1])


def _directives(lines):
  return [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")]


def test_slurm_one_process_per_gpu(capsys, tmp_path):
  lines, sbatch = _script(capsys, "--nodes", "1", "--gpus-per-node", "8", "--job-name", "ast", "--log-dir",
                          str(tmp_path), "--chdir", "/work/js", "--partition", "h100")
  assert sbatch == ["sbatch", str(tmp_path / "ast.sbatch")]
  assert _directives(lines) == ["--job-name=ast", "--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8",
                                "--time=24:00:00", "--exclusive", f"--output={tmp_path}/%x-%j.out",
                                "--partition=h100"]
  assert shlex.split(lines[-1]) == ["srun", f"--output={tmp_path}/%x-%j-%t.log", *TRAIN]
  exports = dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))
  assert shlex.split(exports["XLA_FLAGS"])[0].split() == list(common.GPU_XLA_FLAGS)
  assert exports["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
  assert "cd /work/js" in lines


def test_slurm_one_process_per_node_multi_node(capsys, tmp_path):
  lines, _ = _script(capsys, "--nodes", "8", "--per", "node", "--log-dir", str(tmp_path), "--setup",
                     "source /env/bin/activate", "--env", "NCCL_DEBUG=WARN", "--xla-flags=--xla_dump_to=/tmp/d")
  assert _directives(lines)[1:4] == ["--nodes=8", "--ntasks-per-node=1", "--gpus-per-node=8"]
  assert "source /env/bin/activate" in lines and "export NCCL_DEBUG=WARN" in lines
  assert any(line.startswith("export XLA_FLAGS=") and line.endswith(" --xla_dump_to=/tmp/d'") for line in lines)
  srun = shlex.split(lines[-1])
  assert srun[:3] == ["srun", f"--output={tmp_path}/%x-%j-%t.log", "bash"]
  assert srun[3:] == ["-c", "JAXSPEECH_PROCESS_ID=$SLURM_PROCID exec env -u SLURM_LOCALID " + shlex.join(TRAIN)]
  assert lines[-3:-1] == list(slurm.PER_NODE_JOIN)


def test_slurm_writes_a_valid_script_and_rejects_bad_input(capsys, tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch here: the script is written, submitting fails clearly
  assert slurm.main(["--nodes", "2", "--per", "node", "--log-dir", str(tmp_path), "--", *TRAIN]) == 127
  assert "sbatch is not on PATH" in capsys.readouterr().err
  check = subprocess.run(["/bin/bash", "-n", str(tmp_path / "jaxspeech.sbatch")], capture_output=True, text=True)
  assert check.returncode == 0, check.stderr
  assert "invalid choice: 'socket'" in _error(slurm, capsys, "--per", "socket", "--", *TRAIN)
  assert "must be at least 1, got 0" in _error(slurm, capsys, "--nodes", "0", "--", *TRAIN)
  assert "give the training command after --" in _error(slurm, capsys, "--nodes", "2")


def test_gpu_xla_flags_parse_in_this_jaxlib():
  """XLA aborts on an unknown flag, so a renamed flag would kill every GPU job at start-up."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": dict(common.gpu_env())["XLA_FLAGS"]}
  result = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"], env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_launcher_runs_as_a_script():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_vm.py"), "delete", *WHERE, "--dry-run"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert shlex.split(result.stdout) == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod", *LOCATION, "--quiet"]


def test_execute_stops_at_the_first_failure(tmp_path):
  assert common.execute([["true"], ["false"], ["touch", str(tmp_path / "after")]], dry_run=False) == 1
  assert not (tmp_path / "after").exists()


def test_local_dry_run_prints_each_process_line_and_runs_nothing(tmp_path):
  probe = [sys.executable, "-c", "import os, pathlib; pathlib.Path(os.environ['JAXSPEECH_PROCESS_ID']).touch(); "
           "print(os.environ['JAXSPEECH_NUM_PROCESSES'], os.environ['XLA_FLAGS'])"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num-processes", "3",
                           "--devices-per-process", "2", "--port", "4321", "--dry-run", "--", *probe],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
  assert result.returncode == 0, result.stderr
  assert os.listdir(tmp_path) == []
  lines = result.stdout.splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    argv = shlex.split(line)
    assert argv[:6] == ["env", "JAX_PLATFORMS=cpu", "JAXSPEECH_COORDINATOR_ADDRESS=127.0.0.1:4321",
                        "JAXSPEECH_NUM_PROCESSES=3", f"JAXSPEECH_PROCESS_ID={i}",
                        "XLA_FLAGS=--xla_force_host_platform_device_count=2"]
    assert argv[6:] == probe
    ran = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ran.stdout.split() == ["3", "--xla_force_host_platform_device_count=2"], ran.stderr
  assert sorted(os.listdir(tmp_path)) == ["0", "1", "2"]
