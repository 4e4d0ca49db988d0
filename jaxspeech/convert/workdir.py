"""Converted checkpoints as jaxspeech workdirs (the params back out: `jaxspeech.workdir.Workdir.read_params`).

An imported workdir is what `jaxspeech train` would have written at step 0 for the same model:

    WORKDIR/config.json                 {"family": ..., "model": {...}}: what the trainer checks on resume
    WORKDIR/convert.json                provenance: source, direction, layout, keys initialised or ignored
    WORKDIR/checkpoints/0/state         the TrainState (Orbax): imported params, fresh AdamW state, rng, step 0
    WORKDIR/...                         files the converter carries over, such as an HF tokenizer (`Imported.files`)

The state is built by the trainer's own code (`optim.make`, `state_lib.make_init`) from the shared defaults
(`jaxspeech.train.config.defaults()`: AdamW with clipping, no EMA, and an empty entry for each parameter group
other than "default" that the family puts this model's params in, such as the codec's w2v-BERT teacher in
"frozen"): bit for bit what
`state_lib.create` makes, with the imported params in place of the initial ones. There is no `data` item:
no data iterator has run yet.

Every output is written to a temporary sibling directory and renamed into place once complete, so a
failed conversion leaves nothing at the destination.
"""

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import shutil
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxspeech import sharding
from jaxspeech.convert import mapping
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.train import config as config_lib, optim, registry, state as state_lib
from jaxspeech.workdir import Workdir

STATE_CONFIG = ("jaxspeech.train.config.defaults() (AdamW with clipping, no EMA, the groups the family's "
                "param_groups uses for this model with default settings)")


@dataclasses.dataclass
class Imported:
  """A family converter's result: the model config, the params it read, and what to record about them."""
  model: dict                        # the family's model config, as config.json's "model"
  params: dict[str, np.ndarray]      # our dotted param path -> float32 array
  provenance: dict = dataclasses.field(default_factory=dict)   # layout, generation, ignored keys, labels, ...
  notes: list[str] = dataclasses.field(default_factory=list)   # printed to stderr
  rest: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # other model variables: BatchNorm stats
  files: dict[str, bytes] = dataclasses.field(default_factory=dict)      # file name -> content, into the workdir


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def check_destination(dst: str) -> None:
  if os.path.exists(dst) and not (os.path.isdir(dst) and not os.listdir(dst)):
    raise ConversionError(f"destination {dst}", ["already exists and is not empty; choose a new --dst"])


@contextlib.contextmanager
def staged(dst: str) -> Iterator[str]:
  """A fresh temporary sibling of `dst`, renamed to `dst` when the block succeeds and removed when it fails."""
  check_destination(dst)
  dst = os.path.abspath(dst)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.converting-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.isdir(dst):
      os.rmdir(dst)  # empty (checked above)
    os.replace(tmp, dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def train_config(family: str, model: dict):
  """The config an imported state is built from: the shared defaults with this family and model."""
  cfg = config_lib.defaults()
  cfg.family = family
  cfg.model = ml_collections.ConfigDict(model)
  for label in _group_labels(family, cfg) - {"default"}:  # e.g. "frozen": a teacher the family keeps fixed
    cfg.optim.groups[label] = {}
  return cfg


def _group_labels(family: str, cfg) -> set[str]:
  """The optimizer groups the family's `param_groups` puts this model's params in."""
  family_impl = registry.get(family)
  if family_impl.param_groups is None:
    return {"default"}
  _, abstract_params, _ = state_lib.abstract_model(family_impl, cfg)
  return set(jax.tree.leaves(optim.group_labels(abstract_params, family_impl.param_groups)))


def _state(family_impl, cfg, tx, mesh, params: dict[str, np.ndarray], model_rest: dict[str, np.ndarray]):
  """The step-0 TrainState `state_lib.create` makes, with `params` in place of the initial params (and
  `model_rest` in place of the model's initial other variables, such as BatchNorm statistics).

  The model's random init runs only for the params `params` lacks (and other model variables, if any):
  XLA drops the rest of it, so importing a complete checkpoint compiles no init at all. The result is
  the same, bit for bit, as `state_lib.create` followed by replacing the params.
  """
  def key(path) -> str:
    return ".".join(optim.param_path(path))

  init = state_lib.make_init(family_impl, cfg, tx)
  abstract = jax.eval_shape(init, cfg.seed)
  shardings = state_lib.state_shardings(abstract, mesh)
  missing = {key(path) for path, _ in jax.tree_util.tree_leaves_with_path(abstract.params)} - params.keys()
  initial, rest = {}, abstract.rest
  if missing or jax.tree.leaves(abstract.rest):
    def init_missing(seed):
      state = init(seed)
      return {key(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.params) if key(p) in missing}, state.rest
    initial, rest = jax.jit(init_missing, static_argnums=0)(cfg.seed)

  def put(path, leaf, sharding):
    k = key(path)
    return jax.device_put(initial[k] if k in initial else np.asarray(params[k], leaf.dtype), sharding)

  def assemble(p, rest):
    _, rng = jax.random.split(jax.random.PRNGKey(cfg.seed))  # as make_init splits it
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=p, rest=rest, opt_state=tx.init(p),
        ema=None if abstract.ema is None else jax.tree.map(jnp.copy, p), rng=rng)

  arrays = jax.tree_util.tree_map_with_path(put, abstract.params, shardings.params)
  rest = jax.tree_util.tree_map_with_path(
      lambda path, leaf: np.asarray(model_rest[key(path)], leaf.dtype) if key(path) in model_rest else leaf, rest)
  return jax.jit(assemble, out_shardings=shardings)(arrays, rest)


def write(dst: str, family: str, imported: Imported, provenance: dict) -> dict:
  """Writes `imported` as a workdir at `dst` (see the module docstring); returns what went into convert.json.

  Every imported param must be one of the model's, in its shape; the model's params the import lacks keep
  their initial values and are listed in convert.json (`initialised`). Anything else is a ConversionError.
  """
  check_destination(dst)
  cfg = train_config(family, imported.model)
  family_impl = registry.get(family)
  # As `Trainer.__init__` builds its restore target, so the trainer reads this state as one of its own.
  mesh = sharding.make_mesh(cfg.mesh)
  with sharding.use_rules(mesh, [tuple(r) for r in cfg.axis_rules]):
    _, abstract_params, abstract_rest = state_lib.abstract_model(family_impl, cfg)
    shapes = mapping.param_shapes(abstract_params)
    rest_shapes = mapping.param_shapes(abstract_rest)
    what = f"params for the {family} model {imported.model}"
    problems = [f"unexpected param {k}" for k in sorted(imported.params.keys() - shapes.keys())]
    problems += [f"unexpected model variable {k}" for k in sorted(imported.rest.keys() - rest_shapes.keys())]
    problems += [f"shape mismatch {k}: {v.shape}, expected {every[k]}"
                 for given, every in ((imported.params, shapes), (imported.rest, rest_shapes))
                 for k, v in sorted(given.items()) if k in every and tuple(v.shape) != every[k]]
    if problems:
      raise ConversionError(what, problems)
    tx, _ = optim.make(cfg.optim, cfg.train.steps, abstract_params, family_impl.param_groups)
    state = _state(family_impl, cfg, tx, mesh, imported.params, imported.rest)
  record = {
      "direction": "import", **provenance, **imported.provenance, "family": family, "step": 0,
      "imported": len(imported.params), "initialised": sorted(shapes.keys() - imported.params.keys()),
      **({"files": sorted(imported.files)} if imported.files else {}),
      "state_config": STATE_CONFIG, "jaxspeech": _version("jaxspeech"),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  with staged(dst) as tmp:
    workdir = Workdir(tmp)
    workdir.write_state(state)
    workdir.write_config({"family": family, "model": json.loads(cfg.model.to_json())}, provenance=record)
    for name, content in imported.files.items():
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(content)
  return record
