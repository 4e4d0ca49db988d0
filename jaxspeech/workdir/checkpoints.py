"""Orbax checkpoints of the train state and the Grain iterator, saved asynchronously.

Layout (see `jaxspeech.workdir`): `workdir/checkpoints/<step>/{state,data,digest}`; the best by an eval metric
is kept apart in `workdir/best/<step>`. `data` holds one iterator-state file per host; `digest` a checksum of
every leaf of the state, checked when it is restored. A checkpoint that does not restore, or restores to other bytes than were
saved, is skipped for the one before it and then moved aside to `checkpoints/.damaged/<step>`, so that the
run can save that step again.
"""

import contextlib
import errno
import json
import logging as py_logging
import shutil
import sys

from absl import logging
import grain
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from jaxspeech import storage

_GOLDEN = np.uint32(2654435761)  # odd: every element's weight (2i + 1) · _GOLDEN is odd, so any one flipped bit shows


_METADATA_PER_LEAF = 2048  # bytes Orbax writes per leaf besides its data (metadata, shardings), measured ~1.7 KiB


class DamagedCheckpoint(ValueError):
  """A checkpoint whose restored bytes differ from the digest saved with it."""


class DiskFull(OSError):
  """Too little free space for the next checkpoint, found before any of it is written."""


def out_of_space(e: BaseException | None) -> bool:
  """Whether `e`, or an exception it came from, is a full disk (ENOSPC as Python or tensorstore words it)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


class _OutOfSpaceRecords(py_logging.Filter):
  """Drops Orbax's background-thread tracebacks of a full disk; the trainer reports it in one line."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (out_of_space(record.exc_info[1] if record.exc_info else None)
                or "No space left on device" in record.getMessage())


def _closed_loop_callback(value: BaseException) -> bool:
  """Whether `value` is tensorstore finishing a write of a failed save onto the asyncio loop Orbax has closed."""
  return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


@contextlib.contextmanager
def quiet_when_out_of_space():
  """Within: the log records of a full disk that Orbax's writer threads and their asyncio tasks leave are dropped.

  A full disk leaves it on for the rest of the process, with tensorstore's errors of the failed save's writes
  that finish after Orbax closed its loop (unraisable: `sys.unraisablehook`), since they come at any time until
  the process exits.
  """
  loggers, hide = [py_logging.getLogger(name) for name in ("absl", "asyncio")], _OutOfSpaceRecords()
  previous_hook = sys.unraisablehook
  def hook(unraisable):
    if not _closed_loop_callback(unraisable.exc_value):
      previous_hook(unraisable)
  for logger in loggers:
    logger.addFilter(hide)
  sys.unraisablehook = hook
  full = False
  try:
    yield
  except Exception as e:
    full = out_of_space(e)
    raise
  finally:
    if not full:
      sys.unraisablehook = previous_hook
      for logger in loggers:
        logger.removeFilter(hide)


def _leaf_digest(x: jax.Array) -> jax.Array:
  """Σ_i bits_i · (2i + 1) · _GOLDEN mod 2³² over the leaf's elements, each read as its raw bits."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
  index = jax.lax.broadcasted_iota(jnp.uint32, x.shape, 0) if x.ndim else jnp.uint32(0)
  for axis in range(1, x.ndim):
    index = index * jnp.uint32(x.shape[axis]) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis)
  return jnp.sum(bits * ((2 * index + 1) * _GOLDEN), dtype=jnp.uint32)


_digests = jax.jit(lambda state: jax.tree.map(_leaf_digest, state))


def digest(state) -> dict[str, int]:
  """{leaf path: checksum} of a train state (computed where its shards live; a few bytes come back)."""
  values = jax.device_get(_digests(state))
  return {jax.tree_util.keystr(path): int(v) for path, v in jax.tree_util.tree_leaves_with_path(values)}


def _set_data_state(iterator, state) -> None:
  """Restores `iterator` to a saved state; reads the states of checkpoints written before 2026-12, whose codec
  and vocoder pipelines ended in a step counter ({"parent": state, "count": n}; the step now reaches the loss)."""
  if (isinstance(state, dict) and state.keys() == {"parent", "count"}
      and iterator.get_state().keys() != state.keys()):
    state = state["parent"]
  iterator.set_state(state)
  iterator.start_prefetch()  # as grain.checkpoint.CheckpointRestore does


def _check_digest(saved: dict[str, int], state) -> None:
  restored = digest(state)
  for path, value in saved.items():
    if restored.get(path) != value:
      raise DamagedCheckpoint(f"leaf {path} does not match the checksum saved with it")


class Checkpoints:
  def __init__(self, workdir: str, *, keep: int, async_save: bool = True, best_metric: str = "",
               best_mode: str = "max"):
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                "digest": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(
        storage.join(storage.resolve(workdir), "checkpoints"), item_handlers=handlers,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                             cleanup_tmp_directories=True))
    self.best = None
    if best_metric:
      self.best_metric = best_metric
      self.best = ocp.CheckpointManager(
          storage.join(storage.resolve(workdir), "best"), item_handlers={"state": ocp.StandardCheckpointHandler()},
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode, create=True,
              enable_async_checkpointing=async_save, cleanup_tmp_directories=True))

  def save(self, step: int, state, iterator) -> None:
    self._check_space(step, state)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator),
        digest=ocp.args.JsonSave(digest(state))), force=True)

  def save_best(self, step: int, state, metrics: dict[str, float]) -> None:
    """Saves `state` as the best so far if its eval metric beats the kept one. A step already there was written
    by a run that died before its next checkpoint: the resumed run recomputes the same state bit for bit."""
    if self.best is not None and self.best_metric in metrics and step not in self.best.all_steps():
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                     metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

  def _check_space(self, step: int, state) -> None:
    """DiskFull, before Orbax's writer threads fail one by one, when a local disk lacks the state's bytes."""
    directory = str(self.manager.directory)
    if storage.is_remote(directory):
      return
    leaves = [x for x in jax.tree.leaves(state) if hasattr(x, "nbytes")]
    need = sum(x.nbytes for x in leaves) + _METADATA_PER_LEAF * len(leaves)
    if shutil.disk_usage(directory).free >= need:
      return
    self.manager.wait_until_finished()  # a save in flight is on disk, or failed, before the message names one
    free = shutil.disk_usage(directory).free
    if free < need:
      latest = self.steps()
      raise DiskFull(f"no space for checkpoint {step}: it needs about {need / 2**20:.1f} MiB in {directory}, which "
                     f"has {free / 2**20:.1f} MiB free; "
                     + (f"the latest checkpoint is step {latest[-1]}" if latest else "no checkpoint was saved")
                     + ". Free some space (or lower train.keep) and rerun the same command to resume")

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, target, iterator):
    """The newest readable checkpoint as (step, state), restoring `iterator` in place; None if there is none.

    A checkpoint that fails to load (torn by a crash mid-write, or damaged) or fails its digest is skipped
    with a warning and the one before it is tried; once one loads, the newer ones that did not are moved to
    `checkpoints/.damaged/`. If none loads, that is an error: starting afresh would silently drop the run
    (or the converted params) the workdir holds.
    """
    errors, failed, damaged = [], [], True
    for step in reversed(self.steps()):
      items = {"state": ocp.args.StandardRestore(target)}
      data = self._data_file(step)
      if not storage.exists(data) and jax.process_index() == 0:
        print(f"warning: checkpoint {step} holds no data-iterator state for {jax.process_count()} host(s) (saved "
              "by another host count, or converted); the data stream starts from its beginning")
      has_digest = storage.isdir(storage.join(str(self.manager.directory), str(step), "digest"))
      if has_digest:
        items["digest"] = ocp.args.JsonRestore()
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if has_digest:
          _check_digest(restored["digest"], restored["state"])
        if storage.exists(data):
          _set_data_state(iterator, json.loads(storage.read_text(data)))
      except Exception as e:  # pylint: disable=broad-except
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        errors.append(f"step {step}: {reason}")
        failed.append(step)
        damaged = damaged and isinstance(e, DamagedCheckpoint)
        logging.warning("checkpoint at step %d is unreadable (%s); trying the previous one", step, reason)
        if jax.process_index() == 0:
          print(f"warning: checkpoint {step} is unreadable ({reason}); falling back to an earlier one")
        continue
      self._set_aside(failed)
      return step, restored["state"]
    if errors and damaged:
      raise ValueError(f"every checkpoint in {self.manager.directory} is damaged ({'; '.join(errors)}); "
                       "nothing in this workdir can be resumed")
    if errors:
      raise ValueError(
          f"no checkpoint in {self.manager.directory} fits this config's train state ({'; '.join(errors)}). "
          "A workdir written by `jaxspeech convert` holds the default train state; to train it with another "
          "optimizer setup (EMA, parameter groups, adapters), start a new --workdir with "
          "--config.train.init_from=<converted workdir>.")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged checkpoints out of the manager's sight, so that their steps can be saved again."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = storage.join(str(self.manager.directory), ".damaged")
      storage.makedirs(aside)
      for step in steps:
        target = storage.join(aside, str(step))
        storage.move(storage.join(str(self.manager.directory), str(step)), target)
        print(f"warning: moved damaged checkpoint {step} to {target}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jaxspeech: damaged checkpoints set aside")
    self.manager.reload()

  def _data_file(self, step: int) -> str:
    """This host's iterator state in checkpoint `step`, as `grain.checkpoint.CheckpointSave` writes it."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return storage.join(str(self.manager.directory), str(step), "data", name)

  def wait(self) -> None:
    self.manager.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
    if self.best is not None:
      self.best.close()
