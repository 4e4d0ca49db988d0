"""What a model family gives the trainer. Each `jaxspeech/<family>/family.py` defines `FAMILY`."""

from collections.abc import Callable, Mapping
import dataclasses
from typing import Any

import jax
import ml_collections
from flax import nnx

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  # (config, rngs) -> model
  build_model: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]
  # (model, batch, key, step, config) -> (scalar loss, metrics); runs inside the jitted step. `step` (int32
  # scalar) is the optimizer steps taken before this one, e.g. for a GAN's generator-only warm-up.
  loss: Callable[[nnx.Module, Batch, jax.Array, jax.Array, ml_collections.ConfigDict], tuple[jax.Array, Metrics]]
  # (model, batch, config) -> {name: (sum, count)} summed over an eval pass, reported as sum / count; a value that
  # is an array instead (per-row outputs, e.g. decoded ids) goes to `evaluate_on_host`
  evaluate: Callable[[nnx.Module, Batch, ml_collections.ConfigDict], dict[str, Any]]
  # (config, split, train, shard_index, shard_count) -> grain IterDataset of host-local numpy batches
  make_data: Callable[..., Any]
  # logical axes of each batch field, e.g. {"audio": ("activation_batch", None)}
  batch_axes: Callable[[ml_collections.ConfigDict], Mapping[str, tuple]]
  # analytic FLOPs of one training step on the global batch (forward + backward), for MFU
  train_flops: Callable[[ml_collections.ConfigDict], float]
  # {unit: count} in one host batch (numpy), for throughput, e.g. {"examples": 32, "frames": 8192}
  units: Callable[[Mapping[str, Any]], dict[str, float]]
  # config -> what one global train batch contributes to D, the data axis of a scaling law (Llasa: the real (non-pad)
  # tokens of the packed rows; DiT: mel frames, padding not counted; codec, vocoder: frames at the code or hop rate;
  # AST: patches)
  tokens_per_step: Callable[[ml_collections.ConfigDict], float]
  # param path -> optimizer group name; None puts every param in the group "default"
  param_groups: Callable[[tuple[str, ...], jax.Array], str] | None = None
  # (params read from train.init_from as {dotted path: array}, that workdir's config.json, config) -> params
  # in this model's paths; e.g. SSAST pretraining params into an AST classifier. None keeps them as they are.
  adapt_init: Callable[[dict, dict, ml_collections.ConfigDict], dict] | None = None
  # ({name: numpy array} of `evaluate`'s array outputs, every host's rows, config) -> {name: (sum, count)}: metrics
  # that need the host (WER, PESQ). Not a callback inside the step: on CPU a callback that reads device arrays
  # deadlocks a multi-device step.
  evaluate_on_host: Callable[[Mapping[str, Any], ml_collections.ConfigDict], dict[str, tuple[float, float]]] | None = None
  # (config, workdir) -> the config the run uses, called first on every host: e.g. the dit family copies the
  # vocabulary it builds from the data into the workdir and points the config there. The workdir is "" where
  # there is none (`jaxspeech plan`, benchmarks). None: the config as given.
  prepare: Callable[[ml_collections.ConfigDict, str], ml_collections.ConfigDict] | None = None
  # config -> {field: jax.ShapeDtypeStruct} of one global train batch, without reading data (`jaxspeech plan`
  # on a laptop for a pod's dataset). None: the planner reads one batch of the config's dataset.
  batch_shapes: Callable[[ml_collections.ConfigDict], dict[str, jax.ShapeDtypeStruct]] | None = None
  # config -> {name: (fn(model, **inputs), {input: ShapeDtypeStruct tree}, {input: logical axes tree})}: the
  # programs besides the train step that `jaxspeech plan --topology` compiles (Llasa's prefill and decode step,
  # one DiT sampler step). None: the train step alone.
  inference: Callable[[ml_collections.ConfigDict], dict[str, tuple]] | None = None
