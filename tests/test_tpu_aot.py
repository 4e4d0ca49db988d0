"""`jaxspeech plan --topology`: the real TPU compiler (libtpu, no TPU) on AST's and Llasa's train steps, and the CLI.

Each compiles for a v5e:2x2 slice (Llasa with its prefill and decode step) and for two v5p:2x2x1 slices joined
over a dcn axis (tests/tpu_cases.py says what each must pass). The conv families' steps, which take the TPU
compiler minutes on 2 cores, are in tests/test_tpu_aot_conv.py, so that pytest-xdist runs the two files side
by side.
"""

import json
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxspeech.train import aot, pod, topology
from tests.helpers import ROOT
from tests.tpu_cases import cases, check_train_step, config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family,name,slices,mesh", cases("ast", "llasa"))
def test_transformer_families_compile_for_tpu_and_fit(family, name, slices, mesh):
  check_train_step(family, name, slices, mesh)


def test_accumulation_scales_the_microbatch_and_counts_the_update_once():
  """The cost compile is one microbatch's step; `accum` of them share one optimizer and EMA update."""
  cfg = config("ast")
  cfg.train.update(batch_size=16, ema_decay=0.999)
  target = topology.parse("v5e:2x2")
  one, _ = pod.measure(cfg, target, {"data": 4}, inference=False)
  cfg.train.batch_size, cfg.optim.accum_steps = 32, 2
  two, _ = pod.measure(cfg, target, {"data": 4}, inference=False)
  update = 2 * one.train.flops - two.train.flops
  params = one.params
  # AdamW and the EMA: some 10-30 FLOPs per parameter on each chip (the update is not sharded over `data`).
  assert 10 * params < update < 30 * params, (update, params)
  assert two.train.bytes_accessed < 2 * one.train.bytes_accessed


def test_cost_extrapolated_from_two_shallow_compiles_matches_the_full_unrolled_one():
  """`extrapolate` prices a deep model from its 1- and 2-layer compiles; every layer is the same program. Llasa at
  5 scanned layers against its full unrolled compile, measured 2026-12-07: FLOPs equal, time within 5%, HBM bytes
  2.6% and all-gather bytes 6.6% high (a 1-layer step fuses and gathers a little differently at these tiny
  shapes), hence 5% on bytes and time, 10% on collectives. At DiT
  base scale the 3-layer compile is within 0.3% of the line through 1 and 2 layers (benchmarks/RESULTS.md)."""
  cfg = config("llasa")
  cfg.model.update(layers=5, scan_layers=True)
  target = topology.parse("v5e:2x2")
  full, _ = pod.measure(cfg, target, {"fsdp": 4}, inference=False)
  line, _ = pod.measure(cfg, target, {"fsdp": 4}, inference=False, extrapolate=True)
  assert line.train.flops == pytest.approx(full.train.flops, rel=1e-3)
  assert line.train.bytes_accessed == pytest.approx(full.train.bytes_accessed, rel=5e-2)
  assert line.train.seconds == pytest.approx(full.train.seconds, rel=5e-2)
  for kind, n in full.train.collectives.items():
    assert line.train.collectives[kind] == pytest.approx(n, rel=1e-1)
  assert line.train.peak == full.train.peak  # memory always from the compile as it runs
  assert line.extrapolated and not full.extrapolated
  assert "extrapolated linearly" in pod.report(line) and "extrapolated" not in pod.report(full)


def test_topology_names():
  assert topology.parse("v5p-128") == topology.Topology("v5p", (4, 4, 4))
  assert topology.parse("v5p:4x4x8").chips == 128
  assert topology.parse("v5litepod-16") == topology.parse("v5e:4x4") == topology.parse("v5e-16")
  assert topology.parse("v6e-16", 2).chips == 32
  assert topology.parse("v4-8").shape == (2, 2, 1)
  for bad, says in [("v7-8", "unknown TPU chip"), ("v5p-6", "TensorCores"), ("v5p:2x2", "3 dimensions"),
                    ("v5e-512", "at most 256"), ("tpu", "unknown topology")]:
    with pytest.raises(ValueError, match=says):
      topology.parse(bad)


def test_virtual_devices_carry_their_slice():
  devices = topology.devices(topology.parse("v5p-8", 2))
  assert len(devices) == 8 and {d.platform for d in devices} == {"tpu"}
  assert sorted({d.slice_index for d in devices}) == [0, 1]


def test_out_of_memory_is_reported_by_how_much():
  devices = topology.devices(topology.parse("v5e:1x1"))
  sharding = jax.sharding.SingleDeviceSharding(devices[0])
  big = jax.ShapeDtypeStruct((6, 2**30), jnp.float32, sharding=sharding)  # 24 GiB on a 16 GiB chip
  compiled = aot.compile_for(jax.jit(lambda x: x * 2), (big,))
  assert not compiled.fits and 8 * 2**30 < compiled.over_bytes < 64 * 2**30


def test_collective_bytes_read_from_hlo():
  hlo = """
  %ag = bf16[8,1024]{1,0} all-gather(bf16[2,1024]{1,0} %p), dimensions={0}
  %ars = (f32[4]{0}, f32[4]{0}) all-reduce-start(f32[4]{0} %a, f32[4]{0} %b), to_apply=%add
  %rs = f32[256]{0} reduce-scatter(f32[1024]{0} %g), dimensions={0}
  %ard = (f32[4]{0}, f32[4]{0}) all-reduce-done((f32[4]{0}, f32[4]{0}) %ars)
  """
  assert aot.collective_bytes(hlo) == {"all-gather": 8 * 1024 * 2, "reduce-scatter": 1024, "all-reduce": 16,
                                       "all-to-all": 0, "collective-permute": 0}


def _plan_cli(*args, prelude=""):
  code = f"import sys\n{prelude}\nfrom jaxspeech import cli\nsys.exit(cli.main([\"plan\", *sys.argv[1:]]))"
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, check=False, timeout=600)


@pytest.mark.parametrize("args,says", [
    (["--topology", "v9-8"], "unknown TPU chip 'v9'"),
    (["--topology", "v5e:2x2", "--mesh", "fsdp=3"], "do not divide 4 devices"),
    (["--topology", "v5e:2x2", "--mesh", "fsdp=4", "--num-slices", "2", "--mesh", "fsdp=4,dcn_data=4"],
     "make 4 slices; --num-slices is 2"),
])
def test_bad_input_is_one_line(args, says):
  out = _plan_cli("--config=configs/ast.py:tiny", *args)
  assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_missing_libtpu_names_the_extra():
  out = _plan_cli("--config=configs/ast.py:tiny", "--topology", "v5e:2x2", prelude="sys.modules['libtpu'] = None")
  assert out.returncode == 2 and "pip install" in out.stderr and "[tpu]" in out.stderr, out.stderr


def test_a_step_that_does_not_fit_says_by_how_much():
  """Llasa tiny with 1,024 rows of 512 tokens: its float32 logits alone are 32 GiB a chip of a v5e:2x2."""
  out = _plan_cli("--config=configs/llasa.py:tiny", "--topology", "v5e:2x2", "--mesh", "fsdp=4",
                  "--config.train.batch_size=1024", "--config.model.layers=1")
  assert out.returncode == 0, out.stderr
  assert "| train step | NO: by " in out.stdout, out.stdout


def test_json_and_saved_executable(tmp_path):
  out = _plan_cli("--config=configs/llasa.py:tiny", "--topology", "v5e:2x2", "--mesh", "fsdp=4", "--json",
                  "--config.model.layers=1", "--config.llasa.seq_len=256", "--config.llasa.num_speech_tokens=1024",
                  "--config.model.vocab_size=1288", f"--save-executable={tmp_path / 'step.bin'}")
  assert out.returncode == 0, out.stderr
  plan = json.loads(out.stdout)
  assert plan["topology"] == "v5e:2x2" and plan["chips"] == 4 and plan["programs"][0]["over"] == 0
  assert [p["name"] for p in plan["programs"]] == ["train step", "prefill", "decode step"]
  payload = pickle.loads((tmp_path / "step.bin").read_bytes())  # serialize_executable's (bytes, in tree, out tree)
  assert isinstance(payload[0], bytes) and len(payload[0]) > 1000
