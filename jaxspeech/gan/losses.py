"""GAN objective of the codec and the vocoder (X-codec2's recipe): LSGAN, feature matching, multi-resolution
log-mel L1, and the semantic MSE when the codec has its semantic branch.

The engine takes one gradient of one loss over all params, so the generator and the discriminators are updated
simultaneously from

    total = G_loss(generator; discriminators under stop_gradient) + D_loss(discriminators; stop_gradient(wav_hat))

G_loss reaches the generator only, D_loss the discriminators only. The two players are two optimizer groups
(`param_group`: "default" and "discriminator"), each with its own AdamW state, schedule and clipping norm.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxspeech.audio import features
from jaxspeech.gan.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator

# X-codec2's AdamW (`config.optim` overrides), for the generator (group "default") and the discriminators, whose
# group overrides nothing: the same recipe, with its own moments, schedule and clipping norm.
OPTIM = dict(b1=0.8, b2=0.9, clip_norm=1.0, schedule="cosine", groups=dict(discriminator={}))


def defaults() -> ml_collections.ConfigDict:
  """`config.gan`: discriminator shapes, loss weights (X-codec2's), warm-up and crop."""
  return ml_collections.ConfigDict(dict(
      periods=(2, 3, 5, 7, 11), period_channels=(32, 128, 512, 1024, 1024),
      windows=(2048, 1024, 512), resolution_channels=32,
      # The resolution discriminators divide by the clip's peak + this: Vocos' 1e-9 makes the gradient through a
      # silent clip (the generator's output at init is exactly 0) overflow the gradient norm; -60 dBFS does not.
      peak_floor=1e-3,
      mel_weight=15.0, adversarial_weight=1.0, feature_matching_weight=1.0, semantic_weight=5.0,
      warmup_steps=0,        # generator-only steps (reconstruction losses, no discriminator update) first
      crop_seconds=1.0,      # training crops; rounded down to whole frames (hops)
  ))


def add_discriminators(model: nnx.Module, gan: ml_collections.ConfigDict, rngs: nnx.Rngs) -> None:
  """The two discriminators, named as in X-codec2's checkpoints (`discriminator`, `spec_discriminator`)."""
  model.discriminator = MultiPeriodDiscriminator(tuple(gan.periods), tuple(gan.period_channels), rngs=rngs)
  model.spec_discriminator = MultiResolutionDiscriminator(tuple(gan.windows), gan.resolution_channels, rngs=rngs,
                                                          peak_floor=gan.peak_floor)


def is_discriminator(path: tuple[str, ...]) -> bool:
  return path[0] in ("discriminator", "spec_discriminator")


def param_group(path: tuple[str, ...], leaf) -> str:
  """The optimizer group (`optim.groups`) of a param: the discriminators' own AdamW, or the generator's."""
  del leaf
  return "discriminator" if is_discriminator(path) else "default"


def lsgan_discriminator(real_logits, fake_logits) -> jax.Array:
  """Mean over sub-discriminators of mean (1 - D(real))² + mean D(fake)²."""
  terms = [jnp.mean((1 - r) ** 2) + jnp.mean(f ** 2) for r, f in zip(real_logits, fake_logits, strict=True)]
  return sum(terms) / len(terms)


def lsgan_generator(fake_logits) -> jax.Array:
  """Mean over sub-discriminators of mean (1 - D(fake))²."""
  return sum(jnp.mean((1 - f) ** 2) for f in fake_logits) / len(fake_logits)


def feature_matching(real_fmaps, fake_fmaps) -> jax.Array:
  """Mean over sub-discriminators of Σ_layers mean |real - fake| (Vocos' normalisation)."""
  per_disc = [sum(jnp.mean(jnp.abs(r - f)) for r, f in zip(rs, fs, strict=True))
              for rs, fs in zip(real_fmaps, fake_fmaps, strict=True)]
  return sum(per_disc) / len(per_disc)


def mel_distance(wav_BxS: jax.Array, wav_hat_BxS: jax.Array, sample_rate: int) -> jax.Array:
  """DAC's multi-resolution log10-mel L1 (7 windows 32…2048, 5…320 mels), summed over resolutions; (B,)."""
  mels = features.multi_res_log_mel(jnp.concatenate([wav_BxS, wav_hat_BxS]), sample_rate)
  b = wav_BxS.shape[0]
  return sum(jnp.mean(jnp.abs(m[:b] - m[b:]), axis=(1, 2)) for m in mels)


def _discriminate(discriminators, wav_BxS):
  """(logits, feature maps) of both discriminators, sub-discriminators concatenated."""
  mpd, mrd = discriminators
  (mpd_logits, mpd_fmaps), (mrd_logits, mrd_fmaps) = mpd(wav_BxS), mrd(wav_BxS)
  return mpd_logits + mrd_logits, mpd_fmaps + mrd_fmaps


def gan_loss(model: nnx.Module, wav_BxS: jax.Array, wav_hat_BxS: jax.Array, gan: ml_collections.ConfigDict,
             sample_rate: int, step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(G_loss + D_loss, metrics) for a generator output `wav_hat_BxS`; `model` holds the two discriminators.

  The adversarial, feature-matching and discriminator terms are off for the first `gan.warmup_steps` steps.
  """
  adversarial_on = (step >= gan.warmup_steps).astype(jnp.float32)
  live = (model.discriminator, model.spec_discriminator)
  graphdef, state = nnx.split(live)
  frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
  # the real and the detached fake in one pass: fewer, larger convolutions (the same values)
  b = wav_BxS.shape[0]
  both_logits, both_fmaps = _discriminate(live, jnp.concatenate([wav_BxS, jax.lax.stop_gradient(wav_hat_BxS)]))
  real_logits, detached_logits = jax.tree.map(lambda x: x[:b], both_logits), jax.tree.map(lambda x: x[b:], both_logits)
  real_fmaps = jax.tree.map(lambda x: x[:b], both_fmaps)
  fake_logits, fake_fmaps = _discriminate(frozen, wav_hat_BxS)

  mel = jnp.mean(mel_distance(wav_BxS, wav_hat_BxS, sample_rate))
  adversarial = lsgan_generator(fake_logits)
  fm = feature_matching(jax.lax.stop_gradient(real_fmaps), fake_fmaps)
  d_loss = lsgan_discriminator(real_logits, detached_logits)
  g_loss = (gan.mel_weight * mel
            + adversarial_on * (gan.adversarial_weight * adversarial + gan.feature_matching_weight * fm))
  metrics = {"g_loss": g_loss, "d_loss": d_loss, "mel": mel, "adversarial": adversarial, "feature_matching": fm}
  return g_loss + adversarial_on * d_loss, metrics


def train_flops(cfg: ml_collections.ConfigDict, build, loss_fn, batch) -> float:
  """XLA's FLOP count of `loss_fn`'s gradient on `batch` (abstract), generator and discriminators together."""
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))), nnx.Param, ...)
  grad = jax.grad(lambda p, b: loss_fn(nnx.merge(graphdef, p, rest), b, None, jnp.int32(0), cfg)[0])
  cost = jax.jit(grad).lower(params, batch).cost_analysis()
  return float((cost or {}).get("flops", 0.0))
