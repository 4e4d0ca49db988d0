"""The conv families' train steps (DiT, codec) through the real TPU compiler, beside tests/test_tpu_aot.py.

Each on its presets' data-parallel layout, for a v5e:2x2 slice (the DiT with its sampler step) and for two
v5p:2x2x1 slices over a dcn axis; tests/tpu_cases.py says what each must pass.
"""

import pytest

from tests.tpu_cases import cases, check_train_step

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family,name,slices,mesh", cases("dit", "codec"))
def test_conv_families_compile_for_tpu_and_fit(family, name, slices, mesh):
  check_train_step(family, name, slices, mesh)
