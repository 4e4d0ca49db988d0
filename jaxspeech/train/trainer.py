"""The training loop, generic over a family's objective.

Metrics are fetched one step late: step n+1 is dispatched before step n's scalars are read, so the
host never waits on the device. Checkpoints save asynchronously every `train.checkpoint_every`
steps and at the end; SIGTERM/SIGINT (during a step or an eval, which it cuts short) save one and return,
and the message that says so is printed only once the save is on disk. A workdir that already holds
checkpoints resumes from the newest readable one, with the data iterator where it was; one trainer at a
time holds a workdir (`jaxspeech.workdir.lock`).
"""

import contextlib
import itertools
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from jaxspeech import sharding
from jaxspeech.data import pipeline
from jaxspeech.train import goodput, host, init_from, metrics as metrics_lib, optim, profile, registry
from jaxspeech.train import state as state_lib
from jaxspeech.train import step as step_lib
from jaxspeech.train.family import Family
from jaxspeech.workdir import NotAWorkdir, Workdir, checkpoints as checkpoint_lib, lock as lock_lib


class TrainingError(RuntimeError):
  """A problem the user must fix (non-finite loss, a workdir from another run); printed without a traceback."""


class OutOfSpace(TrainingError):
  """The disk filled while the run wrote to it (a checkpoint, metrics, events), after the space check passed."""


class NonFiniteLoss(TrainingError):
  pass


def _check_schedule(t: ml_collections.ConfigDict) -> None:
  """Refuses step counts the loop cannot honour (a zero checkpoint interval, no steps at all)."""
  for name, least in (("steps", 1), ("checkpoint_every", 1), ("log_every", 1), ("eval_every", 0)):
    if int(t[name]) < least:
      raise TrainingError(f"train.{name}={t[name]} must be at least {least}")


class _StopRequest:
  """Turns the first SIGTERM/SIGINT into a flag the loop checks between steps; a second one ends the process."""

  def __init__(self):
    self.signal = None  # set by the handler, on this host, at any moment
    self.agreed = False  # set by `agree`, at the same point on every host
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name
    for sig, handler in self._previous.items():  # a second signal is not deferred: it ends the process
      signal.signal(sig, handler)

  def agree(self) -> bool:
    """Whether any host has been signalled, the same answer on every host, so that all take the same branch
    (a signal reaches the hosts of a pod at different steps, and saves are collective)."""
    signalled = self.signal is not None
    if jax.process_count() > 1:
      signalled = bool(multihost_utils.process_allgather(np.array(signalled)).any())
    self.agreed = self.agreed or signalled
    return self.agreed

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Trainer:
  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None = None,
               family: Family | None = None):
    """`family` replaces the registry's `cfg.family` (benchmarks time a family with a changed loss)."""
    self.family = family or registry.get(cfg.family)
    if self.family.prepare is not None:
      cfg = self.family.prepare(cfg, workdir)
    self.cfg, self.workdir = cfg, workdir
    host.enable_compilation_cache(cfg.train.compilation_cache)
    self.mesh = sharding.make_mesh(cfg.mesh, devices)
    self.rules = [tuple(r) for r in cfg.axis_rules]
    with sharding.use_rules(self.mesh, self.rules):
      self.graphdef, abstract_params, _ = state_lib.abstract_model(self.family, cfg)
      self.tx, self.schedules = optim.make(cfg.optim, cfg.train.steps, abstract_params, self.family.param_groups)
      self.target, self.shardings = state_lib.abstract_state(self.family, cfg, self.tx, self.mesh)
      self.batch_shardings = {k: NamedSharding(self.mesh, sharding.logical_spec(axes))
                              for k, axes in self.family.batch_axes(cfg).items()}
      self.train_step = step_lib.make_train_step(self.family, cfg, self.graphdef, self.tx, self.schedules,
                                                 self.shardings, self.batch_shardings)
      self.eval_step = step_lib.make_eval_step(self.family, cfg, self.graphdef, self.shardings,
                                               self.batch_shardings, use_ema=bool(cfg.train.ema_decay))
    self.flops_per_step = self.family.train_flops(cfg)

  def _global(self, batch):
    return pipeline.global_batch(batch, self.batch_shardings)

  def _data(self, split: str, train: bool):
    return self.family.make_data(self.cfg, split, train=train, shard_index=jax.process_index(),
                                 shard_count=jax.process_count())

  def _eval_batches(self):
    """One pass over the eval split. Hosts' shares can differ by a batch: a host that has run out
    feeds empty batches (no valid rows) until every host has, so all run the same steps."""
    template = None
    for batch in itertools.chain(pipeline.make_iterator(self._data(self.cfg.data.eval_split, train=False)),
                                 itertools.repeat(None)):
      more = batch is not None
      if jax.process_count() > 1:
        more = bool(multihost_utils.process_allgather(np.array(more)).any())
      if not more:
        return
      if batch is None:
        batch = {k: np.zeros_like(v) for k, v in template.items()}
      template = template or batch
      yield batch

  def evaluate(self, state, stop=None) -> dict[str, float]:
    """Metrics over the eval split; {} if a host is signalled before the pass ends."""
    sums = {}
    with sharding.use_rules(self.mesh, self.rules):
      for batch in self._eval_batches():
        if stop is not None and stop.agree():
          return {}
        out = self.eval_step(state, self._global(batch))
        arrays = {k: v for k, v in out.items() if not isinstance(v, tuple)}
        out = jax.device_get({k: v for k, v in out.items() if isinstance(v, tuple)})
        if arrays:
          out.update(self.family.evaluate_on_host(multihost_utils.process_allgather(arrays, tiled=True), self.cfg))
        for name, (total, count) in out.items():
          s, c = sums.get(name, (0.0, 0.0))
          sums[name] = (s + float(total), c + float(count))
    return {name: s / max(c, 1.0) for name, (s, c) in sums.items()}

  def restore_or_init(self, iterator, checkpoints: checkpoint_lib.Checkpoints):
    with sharding.use_rules(self.mesh, self.rules):
      restored = checkpoints.restore_latest(self.target, iterator)
      if restored is not None:
        return restored[1]
      state, _ = state_lib.create(self.family, self.cfg, self.tx, self.mesh)
      if self.cfg.train.init_from:
        state = init_from.apply(state, self.family, self.cfg)
      return state

  def train(self) -> dict[str, float]:
    """Runs to `train.steps` (or a stop signal); returns the last eval metrics."""
    try:
      with (lock_lib.lock(self.workdir, take=jax.process_index() == 0), _StopRequest() as stop,
            checkpoint_lib.quiet_when_out_of_space()):
        return self._train(stop)
    except (lock_lib.WorkdirInUse, checkpoint_lib.DiskFull, NotAWorkdir) as e:
      raise TrainingError(str(e)) from None
    except Exception as e:  # pylint: disable=broad-except  (a full disk, whichever writer met it first)
      if not checkpoint_lib.out_of_space(e):
        raise
      saved = Workdir(self.workdir).steps()
      raise OutOfSpace(
          f"the disk under {self.workdir} filled up during the run (No space left on device); "
          + (f"the latest checkpoint is step {saved[-1]}" if saved else "no checkpoint was saved")
          + ". Free some space and rerun the same command to resume") from None

  def _train(self, stop: _StopRequest) -> dict[str, float]:
    cfg, t = self.cfg, self.cfg.train
    _check_schedule(t)
    Workdir(self.workdir).claim(cfg, write=jax.process_index() == 0)
    clock, profiler = goodput.Clock(), profile.Profiler(t.profile_steps, self.workdir)
    iterator = pipeline.make_iterator(self._data(cfg.data.train_split, train=True))
    checkpoints = checkpoint_lib.Checkpoints(self.workdir, keep=t.keep, async_save=t.async_checkpoint,
                                         best_metric=t.best_metric, best_mode=t.best_mode)
    with clock.lost_to("checkpoint"):
      state = self.restore_or_init(iterator, checkpoints)
    step = first = int(jax.device_get(state.step))
    writer = metrics_lib.Writer(self.workdir, t.steps, step)
    eval_metrics, pending, last_time, compiled = {}, None, time.perf_counter(), False
    try:
      with sharding.use_rules(self.mesh, self.rules):
        stop.agree()  # a signal while the state was restored or built
        while step < t.steps and not stop.agreed:
          with clock.lost_to("data"):
            host_batch = next(iterator)
            batch = self._global(host_batch)
          profiler.before(step + 1)
          with clock.lost_to("compile") if not compiled else contextlib.nullcontext():
            state, step_metrics = self.train_step(state, batch)
          compiled = True
          step += 1
          with clock.lost_to("profile"):
            profiler.after(step, state)
          if pending is not None:
            last_time = self._report(writer, *pending, last_time, clock)
          pending = (step, step_metrics, self.family.units(host_batch))
          due = step % t.checkpoint_every == 0 or step == t.steps
          if stop.agree() or due:
            with clock.lost_to("checkpoint"):
              checkpoints.save(step, state, iterator)
          if t.eval_every and (step % t.eval_every == 0 or step == t.steps) and not stop.agreed:
            self._report(writer, *pending, last_time, clock)
            pending = None
            with clock.lost_to("eval"):
              eval_metrics = self.evaluate(state, stop)
            if eval_metrics:
              writer.write(step, eval_metrics, prefix="eval/")
              with clock.lost_to("checkpoint"):
                checkpoints.save_best(step, state, eval_metrics)
            last_time = time.perf_counter()
            if stop.agree() and not due:  # a signal during the eval: saved, as one between steps is
              with clock.lost_to("checkpoint"):
                checkpoints.save(step, state, iterator)
        if pending is not None:
          self._report(writer, *pending, last_time, clock)
        if not eval_metrics and t.eval_every and not stop.agreed:  # e.g. rerun on a finished workdir
          eval_metrics = self.evaluate(state, stop)
        if stop.agreed:
          with clock.lost_to("checkpoint"):
            checkpoints.wait()
          if jax.process_index() == 0:
            said = (f"stopped at step {step} with no checkpoint of it" if step not in checkpoints.steps()
                    else f"saved a checkpoint at step {step}" if step > first
                    else f"stopped before a step; the checkpoint at step {step} is as it was")
            said += "; rerun the same command to resume" if step in checkpoints.steps() else ""
            writer.bar.write(f"{stop.signal or 'SIGTERM'}: {said}", file=sys.stderr)
    except NonFiniteLoss as e:
      checkpoints.wait()
      saved = checkpoints.steps()
      said = f"the latest checkpoint is step {saved[-1]}" if saved else "no checkpoint was saved"
      raise NonFiniteLoss(f"{e} Every checkpoint holds finite values; {said}. Lower optim.lr, raise "
                          "optim.warmup_steps or check the data.") from None
    finally:
      profiler.close()
      try:
        with clock.lost_to("checkpoint"):
          checkpoints.wait()
        checkpoints.close()
        writer.write(step, clock.report())
      finally:  # the bar too when a save failed, so that the error starts a line of its own
        writer.close()
    return eval_metrics

  def _report(self, writer, step, step_metrics, units, last_time, clock) -> float:
    values = jax.device_get(step_metrics)
    now = time.perf_counter()
    if not bool(values.pop("finite")):
      raise NonFiniteLoss(
          f"loss or gradient became non-finite at step {step} (loss={float(values['loss'])}, "
          f"grad_norm={float(values['grad_norm'])}); that update was skipped.")
    writer.advance(step)
    if step % self.cfg.train.log_every == 0 or step == self.cfg.train.steps:
      step_time = now - last_time
      scale = jax.process_count() / step_time
      values = {k: float(np.mean(v)) for k, v in values.items()}
      values.update(step_time=step_time, **{f"{u}_per_s": n * scale for u, n in units.items()})
      values.update(metrics_lib.utilisation(self.flops_per_step, step_time, self.mesh.devices.flatten().tolist()))
      values.update(clock.report())
      writer.write(step, values)
    return now


def evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates the newest checkpoint in `workdir` on `data.eval_split`."""
  trainer = Trainer(cfg, workdir)
  checkpoints = checkpoint_lib.Checkpoints(workdir, keep=cfg.train.keep, async_save=False)
  if not checkpoints.steps():
    raise TrainingError(f"no checkpoint in {workdir}; train first with `jaxspeech train`")
  try:
    Workdir(workdir).claim(cfg, write=False)
  except NotAWorkdir as e:
    raise TrainingError(str(e)) from None
  iterator = pipeline.make_iterator(trainer._data(cfg.data.train_split, train=True))  # pylint: disable=protected-access
  state = trainer.restore_or_init(iterator, checkpoints)
  checkpoints.close()
  return trainer.evaluate(state)
