"""SSAST (Gong et al. 2022): self-supervised masked spectrogram patch modelling, and fine-tuning an AST from it.

Pretraining (`SSAST`): the fbank is cut into non-overlapping patches (16×16 at stride 16, or 128×2 frame
patches), the patch embeddings of a masked set (see `masking`) are replaced by a learnable `mask_embed`, and
the AST encoder (with its cls and distillation tokens, as SSAST's DeiT-based models keep both) runs on the
result. At each masked position two heads (D → D → ReLU → patch values) read the encoder output:
- `cpred`, discriminative: InfoNCE against the raw input patches of the masked set of the same example;
- `gpred`, generative: MSE against the raw input patches.
The joint loss is `nce + 10 · mse`, as the reference's `pretrain_joint` (which draws separate masks for its two
terms; here both terms share one mask and one encoder pass).

Fine-tuning (`train.init_from` of an SSAST run, mapped by `jaxspeech.ast.family.adapt_init`): the encoder's
params go into a supervised `AST`; the patch kernel is reused as is under the new strides (e.g. 10×10 overlap),
and the positional embeddings of the patch grid are cut (centre) or bilinearly interpolated to the new grid,
per axis, as SSAST does (`resize_positions`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxspeech.ast import masking
from jaxspeech.ast.model import AST, ASTConfig
from jaxspeech.nn import layers


class PredictionHead(nnx.Module):
  """D → D → ReLU → P, SSAST's `cpredlayer` / `gpredlayer`."""

  def __init__(self, d: int, p: int, dtype, rngs: nnx.Rngs):
    self.fc1 = layers.dense(d, d, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = layers.dense(d, p, ("mlp", None), dtype=dtype, rngs=rngs)

  def __call__(self, x_BxMxD):
    return self.fc2(jax.nn.relu(self.fc1(x_BxMxD)))


class SSAST(nnx.Module):
  def __init__(self, cfg: ASTConfig, rngs: nnx.Rngs):
    pf, pt = cfg.patch_shape
    if (cfg.fstride, cfg.tstride) != (pf, pt) or cfg.num_mel_bins % pf:
      raise ValueError(f"SSAST pretraining needs non-overlapping patches that tile the {cfg.num_mel_bins} mel "
                       f"bins: strides (fstride, tstride) = patch shape {(pf, pt)}, got {(cfg.fstride, cfg.tstride)}")
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.encoder = AST(dataclasses.replace(cfg, num_classes=0), rngs)
    # torch xavier_normal_ on (1, 1, D): std = sqrt(2 / (D + D)).
    self.mask_embed = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(cfg.hidden ** -0.5),
                                                      (None, None, "embed"))(rngs.params(), (1, 1, cfg.hidden)))
    self.cpred = PredictionHead(cfg.hidden, pf * pt, dtype, rngs)
    self.gpred = PredictionHead(cfg.hidden, pf * pt, dtype, rngs)

  def patches(self, fbank_BxTxF: jax.Array) -> jax.Array:
    """Raw input patches (B, N, pf·pt), frequency-major, values in (freq, frame) order (torch `Unfold`'s)."""
    b, frames, _ = fbank_BxTxF.shape
    (f, t), (pf, pt) = self.cfg.grid(frames), self.cfg.patch_shape
    image_BxFxT = jnp.swapaxes(fbank_BxTxF, 1, 2)[:, :f * pf, :t * pt]
    return image_BxFxT.reshape(b, f, pf, t, pt).transpose(0, 1, 3, 2, 4).reshape(b, f * t, pf * pt)

  def encode_masked(self, fbank_BxTxF: jax.Array, mask_BxN: jax.Array) -> jax.Array:
    """Final-norm outputs (B, N, D) of the patch tokens, with the masked patch embeddings replaced."""
    x_BxNxD = self.encoder.patchify(fbank_BxTxF)
    x_BxNxD = jnp.where(mask_BxN[..., None], self.mask_embed[...].astype(x_BxNxD.dtype), x_BxNxD)
    return self.encoder.encode(x_BxNxD, fbank_BxTxF.shape[1])[:, 2:]

  def __call__(self, fbank_BxTxF: jax.Array, idx_BxM: jax.Array) -> dict[str, jax.Array]:
    """Per-example float32 `nce`, `mse` and masked-patch `accuracy` (each (B,)) for masked patches `idx_BxM`."""
    n = self.cfg.grid(fbank_BxTxF.shape[1])
    h_BxNxD = self.encode_masked(fbank_BxTxF, masking.dense(idx_BxM, n[0] * n[1]))
    h_BxMxD = jnp.take_along_axis(h_BxNxD, idx_BxM[..., None], axis=1)
    target_BxMxP = jax.lax.stop_gradient(
        jnp.take_along_axis(self.patches(fbank_BxTxF), idx_BxM[..., None], axis=1)).astype(jnp.float32)
    nce_B, accuracy_B = info_nce(self.cpred(h_BxMxD).astype(jnp.float32), target_BxMxP)
    mse_B = jnp.mean(jnp.square(self.gpred(h_BxMxD).astype(jnp.float32) - target_BxMxP), axis=(1, 2))
    return {"nce": nce_B, "mse": mse_B, "accuracy": accuracy_B}


def info_nce(pred_BxMxP: jax.Array, target_BxMxP: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(nce_B, accuracy_B): SSAST's `mpc` loss, negatives from the masked set of the same example.

  With s_ij = target_i · pred_j, nce = -mean_i log_softmax_j(s)_ii (the reference normalises over the
  predictions for each target; the paper's equation (1) over the targets for each prediction, see ssast
  issue 13). Accuracy, as the reference: for each prediction j, is argmax_i softmax_j(s)_ij equal to j.
  """
  m = pred_BxMxP.shape[1]
  s_BxMxM = jnp.einsum("bip,bjp->bij", target_BxMxP, pred_BxMxP)
  nce_B = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(s_BxMxM, axis=-1), axis1=1, axis2=2), axis=-1)
  best_BxM = jnp.argmax(jax.nn.softmax(s_BxMxM, axis=-1), axis=1)
  return nce_B, jnp.mean((best_BxM == jnp.arange(m)).astype(jnp.float32), axis=-1)


# ------------------------------------------------------------------------------------------------- fine-tuning

def resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """SSAST's positional-embedding resize along one axis: a centre cut when shrinking, else linear
  interpolation with half-pixel centres (torch `interpolate(mode="bilinear", align_corners=False)`)."""
  old = x.shape[axis]
  if size < old:
    start = old // 2 - size // 2
    return np.take(x, np.arange(start, start + size), axis=axis)
  src = np.maximum((np.arange(size) + 0.5) * old / size - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), old - 1)
  hi = np.minimum(lo + 1, old - 1)
  w = (src - lo).reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])
  return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def resize_positions(pos_1xNxD: np.ndarray, source_grid: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
  """Positional embeddings (1, 2 + f·t, D) of `source_grid` moved to `grid`; the two token rows are kept."""
  d = pos_1xNxD.shape[-1]
  grid_FxTxD = pos_1xNxD[0, 2:].reshape(*source_grid, d)
  grid_FxTxD = resize_axis(resize_axis(grid_FxTxD, grid[1], axis=1), grid[0], axis=0)
  return np.concatenate([pos_1xNxD[:, :2], grid_FxTxD.reshape(1, -1, d)], axis=1).astype(pos_1xNxD.dtype)
