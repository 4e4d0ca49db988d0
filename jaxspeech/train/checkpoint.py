"""Orbax checkpoints of the train state and the Grain iterator, saved asynchronously.

Layout: `workdir/checkpoints/<step>/{state,data}`; the best by an eval metric is kept apart in
`workdir/best/<step>`. `data` holds one iterator-state file per host.
"""

import os

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp


class Checkpoints:
  def __init__(self, workdir: str, *, keep: int, async_save: bool = True, best_metric: str = "",
               best_mode: str = "max"):
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
    self.manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"), item_handlers=handlers,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True))
    self.best = None
    if best_metric:
      self.best_metric = best_metric
      self.best = ocp.CheckpointManager(
          os.path.join(os.path.abspath(workdir), "best"), item_handlers={"state": ocp.StandardCheckpointHandler()},
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode, create=True,
              enable_async_checkpointing=async_save))

  def save(self, step: int, state, iterator) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)), force=True)

  def save_best(self, step: int, state, metrics: dict[str, float]) -> None:
    if self.best is not None and self.best_metric in metrics:
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                     metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, target, iterator):
    """The newest readable checkpoint as (step, state), restoring `iterator` in place; None if there is none.

    A checkpoint that fails to load (torn by a crash mid-write, or damaged) is skipped with a warning
    and the one before it is tried. If none loads, that is an error: starting afresh would silently drop
    the run (or the converted params) the workdir holds.
    """
    errors = []
    for step in reversed(self.steps()):
      items = {"state": ocp.args.StandardRestore(target)}
      if self._has_data(step):
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
      elif jax.process_index() == 0:
        print(f"warning: checkpoint {step} holds no data-iterator state for {jax.process_count()} host(s) (saved "
              "by another host count, or converted); the data stream starts from its beginning")
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        logging.warning("checkpoint at step %d is unreadable (%s: %s); trying the previous one",
                        step, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        if jax.process_index() == 0:
          print(f"warning: checkpoint {step} is unreadable ({type(e).__name__}); falling back to an earlier one")
        continue
      return step, restored["state"]
    if errors:
      raise ValueError(
          f"no checkpoint in {self.manager.directory} fits this config's train state ({'; '.join(errors)}). "
          "A workdir written by `jaxspeech convert` holds the default train state; to train it with another "
          "optimizer setup (EMA, parameter groups, adapters), start a new --workdir with "
          "--config.train.init_from=<converted workdir>.")
    return None

  def _has_data(self, step: int) -> bool:
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    return os.path.exists(os.path.join(self.manager.directory, str(step), "data", name))

  def wait(self) -> None:
    self.manager.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
    if self.best is not None:
      self.best.close()
