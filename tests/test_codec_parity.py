"""X-codec2 parity: our Codec against the `xcodec2` package's modules, built small and random-init.

XCodec2Model itself downloads w2v-BERT, so the fixture assembles the submodules it and the training code
hold, under the same attribute names (hence the same state-dict keys): CodecEnc (CodecEncoder_Transformer),
generator (CodecDecoderVocos with its ResidualFSQ), fc_prior, fc_post_a, and for the semantic branch
SemanticEncoder_module, fc_post_s and SemanticDecoder_module. Weights go through jaxspeech.codec.convert.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import reference_stubs

reference_stubs.stub_references()

import torch  # noqa: E402

from jaxspeech.codec import convert, sizes  # noqa: E402
from jaxspeech.codec.model import Codec  # noqa: E402
from jaxspeech.convert import mapping  # noqa: E402
from tests.helpers.codec import CONFIGS, Reference, codec_config, inputs, reference  # noqa: E402

WAV_ATOL = 1e-4       # decoded audio, float32 CPU, max abs
LATENT_ATOL = 1e-5    # encoder latents and semantic predictions, max abs

def codec_from(ref: Reference, cfg) -> Codec:
  """Our Codec holding `ref`'s weights, built without running the random init (slow on CPU)."""
  model = nnx.eval_shape(lambda: Codec(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  _, params = convert.from_state_dict(ref.state_dict(), cfg)
  nnx.replace_by_pure_dict(state, mapping.unflatten(params))
  nnx.update(model, state)
  return model


@nnx.jit
def run(model: Codec, wav_BxS, semantic_BxNxF):
  """(encoder latents, model(wav), decode(its codes))."""
  out = model(wav_BxS, semantic_BxNxF)
  return model.encoder(wav_BxS), out, model.decode(out["codes"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_codec_matches_xcodec2(name):
  ref, cfg = reference(name), codec_config(CONFIGS[name])
  model = codec_from(ref, cfg)
  wav, features = inputs(name)
  expected = ref.run(torch.from_numpy(wav), torch.from_numpy(features))
  semantic = jnp.asarray(features) if cfg.semantic.enabled else None

  latents, out, decoded = run(model, jnp.asarray(wav), semantic)
  np.testing.assert_allclose(np.asarray(latents), expected["latents"], atol=LATENT_ATOL, rtol=0)
  assert len(np.unique(expected["codes"])) > 8, "codes this uniform would test little"
  np.testing.assert_array_equal(np.asarray(out["codes"]), expected["codes"])
  np.testing.assert_allclose(np.asarray(decoded), expected["wav"], atol=WAV_ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(out["wav"]), expected["wav"], atol=WAV_ATOL, rtol=0)
  if cfg.semantic.enabled:
    np.testing.assert_allclose(np.asarray(out["semantic_pred"]), expected["semantic_pred"], atol=LATENT_ATOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(out["semantic_target"]), features)


def test_fsq_codebook_and_straight_through_match_vector_quantize_pytorch():
  from vector_quantize_pytorch import ResidualFSQ  # pylint: disable=import-outside-toplevel
  from jaxspeech.codec.fsq import FSQ  # pylint: disable=import-outside-toplevel
  levels = [4] * 8
  ref = ResidualFSQ(dim=6, levels=levels, num_quantizers=1)
  ours = FSQ(6, levels, rngs=nnx.Rngs(0))
  indices = jnp.arange(ours.codebook_size)
  np.testing.assert_array_equal(np.asarray(ours.indices_to_codes(indices)), ref.layers[0].implicit_codebook.numpy())
  np.testing.assert_array_equal(np.asarray(ours.codes_to_indices(ours.indices_to_codes(indices))), np.asarray(indices))
  # Values and gradients (straight-through rounding) of the quantiser, against ResidualFSQ's forward.
  with torch.no_grad():
    for layer in (ref.project_in, ref.project_out):
      layer.weight.normal_()
      layer.bias.normal_()
  ours.project_in.kernel[...] = jnp.asarray(ref.project_in.weight.detach().numpy().T)
  ours.project_in.bias[...] = jnp.asarray(ref.project_in.bias.detach().numpy())
  ours.project_out.kernel[...] = jnp.asarray(ref.project_out.weight.detach().numpy().T)
  ours.project_out.bias[...] = jnp.asarray(ref.project_out.bias.detach().numpy())
  x = torch.randn(2, 5, 6, requires_grad=True)
  z_q, codes = ref(x)
  (z_q ** 2).sum().backward()
  ours_z_q, ours_codes = ours.quantize(jnp.asarray(x.detach().numpy()))
  grad = jax.grad(lambda x: (ours.quantize(x)[0] ** 2).sum())(jnp.asarray(x.detach().numpy()))
  np.testing.assert_array_equal(np.asarray(ours_codes), codes[..., 0].numpy())
  np.testing.assert_allclose(np.asarray(ours_z_q), z_q.detach().numpy(), atol=LATENT_ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), atol=LATENT_ATOL, rtol=1e-5)


@nnx.jit
def forward(model: Codec, wav_BxS, semantic_BxNxF):
  return model(wav_BxS, semantic_BxNxF)


def test_sharded_codec_matches_xcodec2():
  """Params sharded by their logical axes (fsdp × tensor over 4 fake devices), activations constrained at
  block boundaries: still the reference's codes and audio."""
  from jaxspeech import sharding  # pylint: disable=import-outside-toplevel
  from jaxspeech.train import config as config_lib  # pylint: disable=import-outside-toplevel
  ref, cfg = reference("semantic"), codec_config(CONFIGS["semantic"])
  wav, features = inputs("semantic")
  expected = ref.run(torch.from_numpy(wav), torch.from_numpy(features))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
  with sharding.use_rules(mesh, config_lib.AXIS_RULES):
    graph, state = nnx.split(codec_from(ref, cfg))
    state = jax.device_put(state, sharding.param_shardings(state, mesh))
    model = nnx.merge(graph, state)
    assert model.decoder.transformers[0].fc1.kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    out = forward(model, jnp.asarray(wav), jnp.asarray(features))
  np.testing.assert_array_equal(np.asarray(out["codes"]), expected["codes"])
  np.testing.assert_allclose(np.asarray(out["wav"]), expected["wav"], atol=WAV_ATOL, rtol=0)


def test_bfloat16_compute_stays_close_to_float32():
  """`dtype="bfloat16"` (params float32, FSQ and ISTFT float32): most codes agree, and the reference's codes
  decode to nearly its audio."""
  ref, cfg = reference("semantic"), codec_config(CONFIGS["semantic"])
  wav, features = inputs("semantic")
  expected = ref.run(torch.from_numpy(wav), torch.from_numpy(features))
  model = codec_from(ref, dataclasses.replace(cfg, dtype="bfloat16"))
  out = forward(model, jnp.asarray(wav), jnp.asarray(features))
  assert out["wav"].dtype == jnp.float32 and out["semantic_pred"].dtype == jnp.float32
  assert np.mean(np.asarray(out["codes"]) == expected["codes"]) > 0.5
  decoded = nnx.jit(lambda m, c: m.decode(c))(model, jnp.asarray(expected["codes"]))
  np.testing.assert_allclose(np.asarray(decoded), expected["wav"], atol=0.05 * np.abs(expected["wav"]).max(), rtol=0)


@pytest.mark.parametrize("size", sorted(sizes.SIZES))
def test_sizes_run_at_50_codes_per_second(size):
  """Abstract forward passes (no compile): 1 s + 7 samples at 16 kHz → 51 codes (the end is zero-padded to a
  hop) → 51 hops of audio; codes decode to N · hop samples; the semantic branch asks for its features unless it
  runs its own w2v-BERT, which gives them one frame per code."""
  cfg = sizes.SIZES[size]()
  teacher = cfg.semantic.enabled and cfg.semantic.w2vbert is not None
  model = nnx.eval_shape(lambda: Codec(cfg, rngs=nnx.Rngs(0)))
  wav = jax.ShapeDtypeStruct((2, cfg.sample_rate + 7), jnp.float32)
  features = jax.ShapeDtypeStruct((2, 51, cfg.semantic.features), jnp.float32)
  out = nnx.eval_shape(lambda m, w, s: m(w, s), model, wav, features if cfg.semantic.enabled and not teacher else None)
  assert out["codes"].shape == (2, 51) and out["codes"].dtype == jnp.int32
  assert out["wav"].shape == (2, 51 * 320) and out["z_q"].shape == (2, 51, cfg.fsq.dim)
  assert ("semantic_pred" in out) == cfg.semantic.enabled
  assert nnx.eval_shape(lambda m, c: m.decode(c), model, jax.ShapeDtypeStruct((2, 50), jnp.int32)).shape == (2, 16000)
  if teacher:
    assert out["semantic_target"].shape == (2, 51, cfg.semantic.features)
  elif cfg.semantic.enabled:
    with pytest.raises(ValueError, match="semantic branch"):
      nnx.eval_shape(lambda m, w: m(w), model, wav)
    with pytest.raises(ValueError, match=r"\(B, 51, semantic.features\), one frame per code"):
      nnx.eval_shape(lambda m, w, s: m(w, s), model, wav, jax.ShapeDtypeStruct((2, 50, 1024), jnp.float32))


@pytest.mark.parametrize("traced_for", ["cpu", "tpu"])
@pytest.mark.parametrize("length", [37, 40])
def test_resamplers_match_alias_free_torch(length, traced_for, monkeypatch):
  """The resamplers against alias-free-torch's convolutions, in both forms: the shifted sums a CPU step traces
  and the depthwise convolutions a TPU or GPU step traces (run here on the CPU)."""
  from xcodec2.vq.alias_free_torch import DownSample1d, UpSample1d  # pylint: disable=import-outside-toplevel
  from jaxspeech.codec import encoder  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(encoder, "platform", lambda: traced_for)
  x_BxCxL = np.random.default_rng(length).normal(size=(2, 3, length)).astype(np.float32)
  x_BxLxC = jnp.asarray(x_BxCxL.transpose(0, 2, 1))
  for ours, theirs in ((encoder.upsample, UpSample1d(2, 12)), (encoder.downsample, DownSample1d(2, 12))):
    expected = theirs(torch.from_numpy(x_BxCxL)).numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(ours(x_BxLxC)), expected, atol=LATENT_ATOL, rtol=0)
