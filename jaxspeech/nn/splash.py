"""Self-attention on TPU: Pallas splash attention over packed rows (segment ids, optionally causal).

Splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) is FlashAttention for TPU: it never
writes the L×L scores to HBM and skips the blocks a block-sparse mask leaves empty. A Pallas call is not
partitioned by XLA, so it runs per device inside `shard_map`: rows split as the active rules split
`activation_batch`, heads as `activation_heads`; each device holds whole rows. Rows are padded to whole
blocks with a segment id of their own (-1), so the padding never mixes with the row's tokens.
`interpret=True` runs the same kernel on CPU (the tests compare it with the XLA path).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
from jax.sharding import PartitionSpec

from jaxspeech.sharding import rules

MAX_BLOCK = 512   # query/key block (forward and backward); 128 is the TPU's lane width, the smallest block
LANES = 128
PAD_SEGMENT = -1  # the block padding's segment: real tokens (data padding too, segment 0) never see it


def block_size(length: int) -> int:
  """The kernel's block for rows of `length` tokens: at most MAX_BLOCK, a multiple of 128."""
  return min(MAX_BLOCK, -(-length // LANES) * LANES)


@functools.lru_cache(maxsize=32)
def _kernel(length: int, heads: int, causal: bool, interpret: bool):
  block = block_size(length)
  shape = (length, length)
  mask = masks.MultiHeadMask([masks.CausalMask(shape) if causal else masks.FullMask(shape)] * heads)
  sizes = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                             block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  with jax.ensure_compile_time_eval():  # the mask's block tables as constants, not values of the caller's trace
    return kernels.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def attention(q_BxLxHxK: jax.Array, k_BxLxGxK: jax.Array, v_BxLxGxK: jax.Array, segment_ids_BxL: jax.Array, *,
              causal: bool, interpret: bool = False) -> jax.Array:
  """softmax(q·kᵀ/√K)·v where a token sees the tokens of its own segment (and with `causal` only those at or
  before it); G key/value heads serve H/G query heads each. Needs active sharding rules (`use_rules`)."""
  b, length, heads, dim = q_BxLxHxK.shape
  block = block_size(length)
  padded = -(-length // block) * block
  mesh, axis_rules = rules.current()
  rows, head_axes = axis_rules.get("activation_batch"), axis_rules.get("activation_heads")
  local_heads = heads // rules.shards("activation_heads")
  kernel = _kernel(padded, local_heads, causal, interpret)

  def pad(x, value=0):
    return jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2), constant_values=value)

  def local(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, segment_ids_BxL):
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
    segments = kernels.SegmentIds(q=segment_ids_BxL, kv=segment_ids_BxL)
    out_BxHxLxK = jax.vmap(kernel)(heads_major(q_BxLxHxK), heads_major(k_BxLxGxK), heads_major(v_BxLxGxK),
                                   segment_ids=segments)
    return heads_major(out_BxHxLxK)

  spec = PartitionSpec(rows, None, head_axes, None)
  run = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(rows, None)), out_specs=spec,
                      check_vma=False)
  q_BxLxHxK = (q_BxLxHxK * dim ** -0.5).astype(q_BxLxHxK.dtype)
  out = run(pad(q_BxLxHxK), pad(k_BxLxGxK), pad(v_BxLxGxK.astype(q_BxLxHxK.dtype)),
            pad(segment_ids_BxL.astype(jnp.int32), PAD_SEGMENT))
  return out[:, :length]


def supported(q_BxLxHxK: jax.Array, k_BxLxGxK: jax.Array) -> bool:
  """Whether the shapes split as the kernel needs: whole rows and whole head groups on every device."""
  b, _, heads, _ = q_BxLxHxK.shape
  groups = k_BxLxGxK.shape[2]
  head_shards = rules.shards("activation_heads")
  return (b % rules.shards("activation_batch") == 0 and heads % head_shards == 0 and groups % head_shards == 0
          and (heads // head_shards) % (groups // head_shards) == 0)
