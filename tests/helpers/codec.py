"""X-codec2 references for the codec tests: the `xcodec2` package's modules, built small and random-init.

XCodec2Model itself downloads w2v-BERT, so `Reference` assembles the submodules it and the training code
hold, under the same attribute names (hence the same state-dict keys): CodecEnc (CodecEncoder_Transformer),
generator (CodecDecoderVocos with its ResidualFSQ), fc_prior, fc_post_a, and for the semantic branch
SemanticEncoder_module, fc_post_s and SemanticDecoder_module.
"""

import numpy as np

from tests import reference_stubs

reference_stubs.stub_references()

import torch  # noqa: E402
from xcodec2.vq.codec_decoder_vocos import CodecDecoderVocos  # noqa: E402
from xcodec2.vq.codec_encoder import CodecEncoder_Transformer  # noqa: E402
from xcodec2.vq.module import SemanticDecoder, SemanticEncoder  # noqa: E402

from jaxspeech.codec.encoder import EncoderConfig  # noqa: E402
from jaxspeech.codec.model import CodecConfig, FSQConfig, SemanticConfig  # noqa: E402
from jaxspeech.vocoder.decoder import DecoderConfig  # noqa: E402
from tests.helpers.ast import perturbed  # noqa: E402

# Two small shapes: acoustic-only at hop 10, and the semantic branch at hop 20 with three dilations.
CONFIGS = {
    "acoustic": dict(channels=4, strides=[2, 5], dilations=[1, 3], enc_dim=16, semantic=False, features=12,
                     sem_dim=16, vq_dim=24, dec_dim=32, depth=1, heads=2),
    "semantic": dict(channels=4, strides=[2, 2, 5], dilations=[1, 3, 9], enc_dim=16, semantic=True, features=12,
                     sem_dim=16, vq_dim=24, dec_dim=64, depth=2, heads=4),
}


def codec_config(c: dict):
  hop = int(np.prod(c["strides"]))
  return CodecConfig(
      encoder=EncoderConfig(channels=c["channels"], strides=c["strides"], dilations=c["dilations"], dim=c["enc_dim"]),
      semantic=SemanticConfig(enabled=c["semantic"], features=c["features"], dim=c["sem_dim"]),
      fsq=FSQConfig(dim=c["vq_dim"]),
      decoder=DecoderConfig(input_channels=c["dec_dim"], dim=c["dec_dim"], depth=c["depth"], heads=c["heads"],
                            n_fft=4 * hop, hop=hop, norm_groups=32))


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


def inputs(name: str, frames: int = 12, batch: int = 2, seed: int = 0):
  c, rng = CONFIGS[name], np.random.default_rng(seed)
  samples = frames * int(np.prod(c["strides"]))
  t = np.arange(samples) / 16000
  wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000, (batch, 1)) * t) + 0.05 * rng.normal(size=(batch, samples))
  features = rng.normal(size=(batch, frames, c["features"]))
  return wav.astype(np.float32), features.astype(np.float32)
