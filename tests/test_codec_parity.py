"""X-codec2 parity: our Codec against the `xcodec2` package's modules, built small and random-init.

XCodec2Model itself downloads w2v-BERT, so the fixture assembles the submodules it and the training code
hold, under the same attribute names (hence the same state-dict keys): CodecEnc (CodecEncoder_Transformer),
generator (CodecDecoderVocos with its ResidualFSQ), fc_prior, fc_post_a, and for the semantic branch
SemanticEncoder_module, fc_post_s and SemanticDecoder_module. Weights go through jaxspeech.codec.convert.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import reference_stubs

reference_stubs.stub_references()

import torch  # noqa: E402
from xcodec2.vq.codec_decoder_vocos import CodecDecoderVocos  # noqa: E402
from xcodec2.vq.codec_encoder import CodecEncoder_Transformer  # noqa: E402
from xcodec2.vq.module import SemanticDecoder, SemanticEncoder  # noqa: E402

from jaxspeech.codec import convert, sizes  # noqa: E402
from jaxspeech.codec.model import Codec  # noqa: E402
from jaxspeech.convert import mapping  # noqa: E402
from tests.test_ast_parity import perturbed  # noqa: E402

WAV_ATOL = 1e-4       # decoded audio, float32 CPU, max abs
LATENT_ATOL = 1e-5    # encoder latents and semantic predictions, max abs

# Two small shapes: acoustic-only at hop 10, and the semantic branch at hop 20 with three dilations.
CONFIGS = {
    "acoustic": dict(channels=4, strides=[2, 5], dilations=[1, 3], enc_dim=16, semantic=False, features=12,
                     sem_dim=16, vq_dim=24, dec_dim=32, depth=1, heads=2),
    "semantic": dict(channels=4, strides=[2, 2, 5], dilations=[1, 3, 9], enc_dim=16, semantic=True, features=12,
                     sem_dim=16, vq_dim=24, dec_dim=64, depth=2, heads=4),
}


def codec_config(c: dict):
  cfg = sizes.base()
  hop = int(np.prod(c["strides"]))
  cfg.encoder.update(channels=c["channels"], strides=c["strides"], dilations=c["dilations"], dim=c["enc_dim"])
  cfg.semantic.update(enabled=c["semantic"], features=c["features"], dim=c["sem_dim"])
  cfg.fsq.dim = c["vq_dim"]
  cfg.decoder.update(input_channels=c["dec_dim"], dim=c["dec_dim"], depth=c["depth"], heads=c["heads"],
                     n_fft=4 * hop, hop=hop, norm_groups=32)
  return cfg


class Reference(torch.nn.Module):
  """xcodec2's codec modules under XCodec2Model's (and the training code's) attribute names."""

  def __init__(self, c: dict):
    super().__init__()
    hop = int(np.prod(c["strides"]))
    self.CodecEnc = CodecEncoder_Transformer(ngf=c["channels"], up_ratios=c["strides"], dilations=c["dilations"],
                                             hidden_dim=c["enc_dim"])
    self.generator = CodecDecoderVocos(hidden_dim=c["dec_dim"], depth=c["depth"], heads=c["heads"],
                                       pos_meb_dim=c["dec_dim"] // c["heads"], hop_length=hop, vq_dim=c["vq_dim"])
    self.semantic = c["semantic"]
    self.fc_prior = torch.nn.Linear(c["enc_dim"] + (c["sem_dim"] if c["semantic"] else 0), c["vq_dim"])
    self.fc_post_a = torch.nn.Linear(c["vq_dim"], c["dec_dim"])
    if c["semantic"]:
      self.SemanticEncoder_module = SemanticEncoder(c["features"], c["sem_dim"], c["sem_dim"])
      self.fc_post_s = torch.nn.Linear(c["vq_dim"], c["sem_dim"])
      self.SemanticDecoder_module = SemanticDecoder(c["sem_dim"], c["features"], c["sem_dim"])

  @torch.no_grad()
  def run(self, wav_BxS, features_BxNxF):
    """As XCodec2Model.encode_code and decode_code (and the training code's semantic reconstruction)."""
    acoustic_BxNxA = self.CodecEnc(wav_BxS[:, None])
    x_BxNxC = acoustic_BxNxA
    if self.semantic:
      semantic_BxExN = self.SemanticEncoder_module(features_BxNxF.transpose(1, 2))
      x_BxNxC = torch.cat([semantic_BxExN.transpose(1, 2), acoustic_BxNxA], dim=-1)
    _, codes_Bx1xN, _ = self.generator(self.fc_prior(x_BxNxC).transpose(1, 2), vq=True)
    z_q_BxNxD = self.generator.quantizer.get_output_from_indices(codes_Bx1xN.transpose(1, 2))
    wav_Bx1xS, _ = self.generator(self.fc_post_a(z_q_BxNxD), vq=False)
    out = {"latents": acoustic_BxNxA, "codes": codes_Bx1xN[:, 0], "wav": wav_Bx1xS[:, 0]}
    if self.semantic:
      out["semantic_pred"] = self.SemanticDecoder_module(self.fc_post_s(z_q_BxNxD).transpose(1, 2)).transpose(1, 2)
    return {k: v.numpy() for k, v in out.items()}

  @torch.no_grad()
  def spread_codes(self, wav_BxS, features_BxNxF) -> None:
    """Standardises each output of the FSQ input projection on this audio: random-init latents are tiny and
    would all round to one code."""
    x_BxNxC = self.CodecEnc(wav_BxS[:, None])
    if self.semantic:
      semantic_BxExN = self.SemanticEncoder_module(features_BxNxF.transpose(1, 2))
      x_BxNxC = torch.cat([semantic_BxExN.transpose(1, 2), x_BxNxC], dim=-1)
    h_Mxd = self.generator.quantizer.project_in(self.fc_prior(x_BxNxC)).flatten(0, 1)
    mean_d, std_d = h_Mxd.mean(0), h_Mxd.std(0)
    project_in = self.generator.quantizer.project_in
    project_in.weight.div_(std_d[:, None])
    project_in.bias.sub_(mean_d).div_(std_d)


def reference(name: str, seed: int = 0) -> Reference:
  torch.manual_seed(seed)
  ref = perturbed(Reference(CONFIGS[name]), seed)
  ref.spread_codes(*map(torch.from_numpy, inputs(name)))
  return ref


def codec_from(ref: Reference, cfg) -> Codec:
  """Our Codec holding `ref`'s weights, built without running the random init (slow on CPU)."""
  model = nnx.eval_shape(lambda: Codec(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  _, params = convert.from_state_dict(ref.state_dict(), cfg)
  nnx.replace_by_pure_dict(state, mapping.unflatten(params))
  nnx.update(model, state)
  return model


def inputs(name: str, frames: int = 12, batch: int = 2, seed: int = 0):
  c, rng = CONFIGS[name], np.random.default_rng(seed)
  samples = frames * int(np.prod(c["strides"]))
  t = np.arange(samples) / 16000
  wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000, (batch, 1)) * t) + 0.05 * rng.normal(size=(batch, samples))
  features = rng.normal(size=(batch, frames, c["features"]))
  return wav.astype(np.float32), features.astype(np.float32)


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
  cfg.dtype = "bfloat16"
  model = codec_from(ref, cfg)
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


@pytest.mark.parametrize("length", [37, 40])
def test_resamplers_match_alias_free_torch(length):
  """The polyphase upsampler and the shifted-sum downsampler against alias-free-torch's convolutions."""
  from xcodec2.vq.alias_free_torch import DownSample1d, UpSample1d  # pylint: disable=import-outside-toplevel
  from jaxspeech.codec import encoder  # pylint: disable=import-outside-toplevel
  x_BxCxL = np.random.default_rng(length).normal(size=(2, 3, length)).astype(np.float32)
  x_BxLxC = jnp.asarray(x_BxCxL.transpose(0, 2, 1))
  for ours, theirs in ((encoder.upsample, UpSample1d(2, 12)), (encoder.downsample, DownSample1d(2, 12))):
    expected = theirs(torch.from_numpy(x_BxCxL)).numpy().transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(ours(x_BxLxC)), expected, atol=LATENT_ATOL, rtol=0)
