"""A jaxspeech workdir: the one place its format is known. Training, `convert`, `init_from`, synthesis, eval
and sweeps all read and write it through `Workdir`. A workdir is a local directory or a gs:// prefix
(`storage`).

    WORKDIR/config.json               the run's config (ml_collections JSON); a converted workdir holds only
                                      {"family": ..., "model": {...}}. `family` and `model` are checked on resume.
    WORKDIR/convert.json              a converted workdir's provenance (source, layout, keys initialised/ignored)
    WORKDIR/checkpoints/<step>/       one Orbax checkpoint per saved step (`checkpoints.Checkpoints`):
        state/                        the TrainState (StandardSave): step, params, rest, opt_state, ema, rng;
                                      each nnx Variable is a {"value": array} leaf, params by module path
        data/process_<i>-of-<n>.json  each host's Grain iterator state (absent in a converted workdir)
        digest/                       {leaf path: uint32 checksum} of `state`, checked when it is restored
    WORKDIR/checkpoints/.damaged/<step>/  checkpoints that failed to restore, moved aside
    WORKDIR/best/<step>/state         the best checkpoint by `train.best_metric` (state only)
    WORKDIR/metrics.jsonl             one JSON line per logged step ({"step": n, ...}); trimmed to the restored
                                      step on resume
    WORKDIR/tb/                       TensorBoard events of the same scalars
    WORKDIR/lock                      the live trainer's host, pid and start time (`lock.lock`)
    WORKDIR/profile/                  jax.profiler traces (`train.profile_steps`)
    family files                      e.g. the dit family's vocab.txt, written by its `prepare`

Reading the params without jaxspeech, with plain Orbax: docs/training.md, "Reading a checkpoint with plain Orbax"
(numpy restore types for every leaf, so any host reads a checkpoint saved over any device count).
"""

import dataclasses
import json

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxspeech.convert import mapping
from jaxspeech import storage

CONFIG = "config.json"
PROVENANCE = "convert.json"


class NotAWorkdir(ValueError):
  """A directory that holds no jaxspeech workdir, or not the family or step asked for."""


@dataclasses.dataclass
class Params:
  """A workdir's params at one step, as float32 numpy by dotted path (`blocks.0.attn.query.kernel`)."""
  family: str
  model: dict                        # config.json's "model"
  params: dict[str, np.ndarray]
  step: int
  weights: str                       # "params" or "ema": which tree `params` holds
  provenance: dict                   # convert.json, {} if there is none
  rest: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # other model variables: BatchNorm stats


def _strip_value(tree):
  """A restored nnx.State tree (each Variable saved as {"value": array}) as a plain nested dict of arrays."""
  if isinstance(tree, dict):
    if tree.keys() == {"value"} and not isinstance(tree["value"], dict):
      return tree["value"]
    return {k: _strip_value(v) for k, v in tree.items()}
  return tree


def _write_json(path: str, obj) -> None:
  storage.write_text(path, json.dumps(obj, indent=2) + "\n")


class Workdir:
  def __init__(self, path: str):
    self.path = storage.resolve(path)

  def __repr__(self) -> str:
    return f"Workdir({self.path!r})"

  def file(self, *names: str) -> str:
    return storage.join(self.path, *names)

  @property
  def config(self) -> dict:
    """config.json as a dict."""
    if not storage.exists(self.file(CONFIG)):
      raise FileNotFoundError(f"{self.path} has no {CONFIG}; is it a jaxspeech workdir?")
    return json.loads(storage.read_text(self.file(CONFIG)))

  @property
  def provenance(self) -> dict:
    if not storage.exists(self.file(PROVENANCE)):
      return {}
    return json.loads(storage.read_text(self.file(PROVENANCE)))

  def write_config(self, config: dict, provenance: dict | None = None) -> None:
    storage.makedirs(self.path)
    _write_json(self.file(CONFIG), config)
    if provenance is not None:
      _write_json(self.file(PROVENANCE), provenance)

  def claim(self, cfg: ml_collections.ConfigDict, write: bool = True) -> None:
    """Writes `cfg` as config.json in a new workdir (`write`: on process 0); in one that has a config.json,
    refuses a `family` or `model` other than the one it holds. Model fields added since are new knobs. Checkpoints
    without a config.json (deleted, or written by a run still ending after its workdir was removed) are refused:
    nothing says which model they hold."""
    storage.makedirs(self.path)
    if not storage.exists(self.file(CONFIG)):
      if self.steps():
        raise NotAWorkdir(f"workdir {self.path} has checkpoints {self.steps()} but no {CONFIG}, so nothing says "
                          f"which model they hold. Use a new --workdir.")
      if write:
        _write_json(self.file(CONFIG), json.loads(cfg.to_json()))
      return
    saved = self.config
    for key in ("family", "model"):
      now = json.loads(cfg[key].to_json() if key == "model" else json.dumps(cfg[key]))
      if key == "model" and isinstance(saved.get(key), dict):
        now = {k: v for k, v in now.items() if k in saved[key]}
      if saved.get(key) != now:
        raise NotAWorkdir(f"workdir {self.path} holds a run with a different {key} ({key}={saved.get(key)!r}); "
                          f"this config has {key}={cfg[key]!r}. Use a new --workdir.")

  def steps(self, best: bool = False) -> list[int]:
    """The finished checkpoint steps: on disk Orbax renames a step's temporary dir to its number when it is done;
    in a bucket (no atomic rename) it writes into the step's dir and adds commit_success.txt last."""
    directory = self.file("best" if best else "checkpoints")
    done = "commit_success.txt" if storage.is_remote(directory) else "state"  # Orbax's mark on a bucket
    return sorted(int(name) for name in storage.listdir(directory)
                  if name.isdigit() and storage.exists(storage.join(directory, name, done)))

  def read_params(self, family: str | None = None, *, step: int | None = None, best: bool = False,
                  weights: str = "auto") -> Params:
    """The params of the newest checkpoint (or `step`, or the best one), as float32 numpy.

    `family`: refuse a workdir of another family. `weights`: "params", "ema", or "auto" (the EMA when the
    checkpoint has one, as `jaxspeech eval` uses it).
    """
    saved = self.config
    if family is not None and saved.get("family") != family:
      raise NotAWorkdir(f"workdir {self.path} holds a {saved.get('family')!r} run, not {family!r}")
    available = self.steps(best)
    where = self.file("best" if best else "checkpoints")
    if not available:
      raise NotAWorkdir(f"workdir {self.path} has no checkpoint in {where}")
    if step is None:
      step = available[-1]
    elif step not in available:
      raise NotAWorkdir(f"workdir {self.path} has no checkpoint at step {step} (it has {available})")
    path = storage.join(where, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointHandler()  # the item's handler: no step metadata is looked for in `state/`
    tree = checkpointer.metadata(epath.Path(path)).tree
    has_ema = tree.get("ema") is not None
    if weights == "auto":
      weights = "ema" if has_ema else "params"
    if weights == "ema" and not has_ema:
      raise NotAWorkdir(f"checkpoint {path} has no EMA (train.ema_decay was 0); use --weights params")
    items = [weights] + (["rest"] if jax.tree.leaves(tree.get("rest")) else [])
    target = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree[k]) for k in items}
    restored = checkpointer.restore(epath.Path(path), args=ocp.args.PyTreeRestore(
        item=target, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target),
        partial_restore=True))
    flat = {k: mapping.flatten(_strip_value(v)) for k, v in restored.items()}
    return Params(family=saved["family"], model=saved["model"], params=flat[weights], step=step, weights=weights,
                  provenance=self.provenance, rest=flat.get("rest", {}))

  def write_state(self, state, step: int = 0) -> None:
    """Saves a TrainState as checkpoint `step` (no data item: no iterator has run), synchronously."""
    manager = ocp.CheckpointManager(
        self.file("checkpoints"), item_handlers={"state": ocp.StandardCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
    manager.wait_until_finished()
    manager.close()

  def load_model(self, family, *, weights: str = "auto", step: int | None = None
                 ) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """(`family.build_model` holding the checkpoint's params and BatchNorm statistics, the {family, model} config
    it was built from).

    The model is built from `family` and `model` alone, without a random init, so a GAN-trained codec or
    vocoder comes back as its generator (its discriminators' params are not read into it).
    """
    read = self.read_params(family.name, step=step, weights=weights)
    cfg = ml_collections.ConfigDict({"family": read.family, "model": read.model})
    model = nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0)))
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    abstract = {".".join(map(str, path)): v for path, v in nnx.to_flat_state(state)}
    saved = {**read.params, **read.rest}
    missing = sorted(abstract.keys() - saved.keys())
    if missing:
      raise NotAWorkdir(f"workdir {self.path} has no param {', '.join(missing[:4])}"
                        + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""))
    wrong = [f"{k} {saved[k].shape} (the model has {v.shape})" for k, v in abstract.items()
             if tuple(saved[k].shape) != tuple(v.shape)]
    if wrong:
      raise NotAWorkdir(f"workdir {self.path} has params of other shapes: {'; '.join(wrong[:4])}")
    nnx.replace_by_pure_dict(state, mapping.unflatten({k: jnp.asarray(saved[k], v.dtype) for k, v in abstract.items()}))
    nnx.update(model, state)
    return model, cfg
