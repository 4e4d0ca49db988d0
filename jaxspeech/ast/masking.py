"""SSAST patch masks, drawn in-graph from a key with a static count (so they are jittable and a resumed run
draws the same masks as an uninterrupted one).

Patch indices are frequency-major over the patch grid (f, t), as `AST.patchify` orders them.

- `cluster_mask` (SSAST's `gen_maskid_patch`, for 16×16 patches): pick one cluster size c per example
  from `sizes`, then random centre patches; each masks the c×c block around it, clipped to the grid, until
  `count` patches are masked. The block that crosses `count` contributes a random part of its new patches.
- `random_mask` (SSAST's `gen_maskid_frame`, for 128×2 frame patches): `count` patches uniformly without
  replacement.

Differences from the reference (which loops on the host): its block starts at the drawn patch (top-left)
and runs on past the end of a grid row into the next; here the block is centred on the drawn patch
(offsets -(c//2) .. c-1-c//2) and clipped to the grid in both directions. The reference also never masks
patch 0 and cuts its oversized set down to the lowest indices; here every patch can be masked and the cut
is random within the last block.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def cluster_order(key: jax.Array, grid: tuple[int, int], sizes: Sequence[int] = (3, 4, 5),
                  blocks: int = 64) -> tuple[jax.Array, jax.Array]:
  """(first_N, c): the index of the first of `blocks` random c×c blocks that covers each patch (`blocks` where
  none does), and the cluster size c drawn from `sizes`."""
  f, t = grid
  size_key, centre_key = jax.random.split(key)
  c = jnp.asarray(sizes, jnp.int32)[jax.random.randint(size_key, (), 0, len(sizes))]
  centres_K = jax.random.randint(centre_key, (blocks,), 0, f * t)
  row_lo_K = centres_K // t - c // 2
  col_lo_K = centres_K % t - c // 2
  rows_N, cols_N = jnp.arange(f * t) // t, jnp.arange(f * t) % t
  covers_KxN = ((rows_N[None] >= row_lo_K[:, None]) & (rows_N[None] < row_lo_K[:, None] + c) &
                (cols_N[None] >= col_lo_K[:, None]) & (cols_N[None] < col_lo_K[:, None] + c))
  first_N = jnp.where(covers_KxN.any(0), jnp.argmax(covers_KxN, axis=0), blocks)
  return first_N.astype(jnp.int32), c


def cluster_mask(key: jax.Array, grid: tuple[int, int], count: int, sizes: Sequence[int] = (3, 4, 5),
                 blocks: int | None = None) -> jax.Array:
  """`count` sorted patch indices (int32) masked in c×c clusters; see the module docstring.

  `blocks` bounds the clusters drawn (default `count`, far more than are needed); should they cover fewer
  than `count` patches, the rest are drawn uniformly.
  """
  n = grid[0] * grid[1]
  if not 0 < count <= n:
    raise ValueError(f"cannot mask {count} of {n} patches")
  order_key, tie_key = jax.random.split(key)
  first_N, _ = cluster_order(order_key, grid, sizes, blocks or count)
  # Earlier blocks first; a random permutation orders patches within a block and the uncovered rest.
  rank_N = jax.random.permutation(tie_key, n)
  return jnp.sort(jnp.argsort(first_N * n + rank_N)[:count]).astype(jnp.int32)


def random_mask(key: jax.Array, n: int, count: int) -> jax.Array:
  """`count` sorted patch indices (int32) of `n`, uniformly without replacement."""
  if not 0 < count <= n:
    raise ValueError(f"cannot mask {count} of {n} patches")
  return jnp.sort(jax.random.permutation(key, n)[:count]).astype(jnp.int32)


def batch_masks(key: jax.Array, batch: int, grid: tuple[int, int], count: int, kind: str = "cluster",
                sizes: Sequence[int] = (3, 4, 5)) -> jax.Array:
  """(batch, count) masked patch indices, one independent mask per row; `kind` is "cluster" or "random"."""
  keys = jax.random.split(key, batch)
  if kind == "cluster":
    return jax.vmap(lambda k: cluster_mask(k, grid, count, sizes))(keys)
  if kind == "random":
    return jax.vmap(lambda k: random_mask(k, grid[0] * grid[1], count))(keys)
  raise ValueError(f"unknown SSAST masking {kind!r}; choose 'cluster' or 'random'")


def dense(idx_BxM: jax.Array, n: int) -> jax.Array:
  """(B, n) bool, True at the masked patches."""
  return jnp.zeros((idx_BxM.shape[0], n), bool).at[jnp.arange(idx_BxM.shape[0])[:, None], idx_BxM].set(True)
