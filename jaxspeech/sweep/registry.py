"""The sweep's SQLite registry (`DIR/sweep.db`): one row per run.

Statuses: `pending` (not run, or interrupted, or waiting for its retry), `running` (a local process
is on it), `submitted` (a SLURM array task or xpk workload is on it), `done`, `failed` (failed twice:
first try and one retry), `diverged` (non-finite loss or a loss spike). Only the process that runs
`jaxspeech sweep run|fit|status` writes it; SLURM and xpk tasks write `runs/<name>/result.json`,
which those commands fold in (`collect`).
"""

import contextlib
import json
import os
import sqlite3
import time
from typing import Any

from jaxspeech.sweep.design import Run

FILE = "sweep.db"
FINAL = ("done", "failed", "diverged")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  idx INTEGER PRIMARY KEY,        -- stable: the SLURM array index and the xpk workload suffix
  name TEXT UNIQUE NOT NULL,
  overrides TEXT NOT NULL,        -- JSON {field: value}, the run's --config. flags
  coords TEXT NOT NULL,           -- JSON design point: budget, width, depth, grid values
  status TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0,
  params INTEGER,                 -- N
  tokens REAL,                    -- D
  steps INTEGER,
  flops REAL,                     -- the family's analytic training FLOPs
  compute REAL,                   -- 6 N D
  budget REAL,                    -- the IsoFLOP budget C; NULL in grids
  final_eval_loss REAL,
  min_eval_loss REAL,
  final_train_loss REAL,
  wall_time REAL,                 -- seconds in `jaxspeech train`, all attempts
  error TEXT,
  pid INTEGER,                    -- the local train process while running
  job TEXT,                       -- the SLURM job id or xpk workload name
  updated REAL
)
"""

COLUMNS = ("idx", "name", "overrides", "coords", "status", "attempts", "params", "tokens", "steps", "flops",
           "compute", "budget", "final_eval_loss", "min_eval_loss", "final_train_loss", "wall_time", "error",
           "pid", "job", "updated")


class Registry:
  def __init__(self, sweep_dir: str, in_memory: bool = False):
    """The registry of `sweep_dir`; `in_memory`: a copy of it (empty when there is none) whose writes go
    nowhere, for dry runs."""
    path = os.path.join(sweep_dir, FILE)
    if in_memory:
      self.db = sqlite3.connect(":memory:")
      if os.path.exists(path):
        source = sqlite3.connect(path)
        source.backup(self.db)
        source.close()
    else:
      os.makedirs(sweep_dir, exist_ok=True)
      self.db = sqlite3.connect(path, timeout=60)
      self.db.execute("PRAGMA journal_mode=WAL")
    self.db.execute(_SCHEMA)
    self.db.commit()
    self.db.row_factory = sqlite3.Row

  def close(self) -> None:
    self.db.close()

  def rows(self, *statuses: str) -> list[dict[str, Any]]:
    query = "SELECT * FROM runs" + (f" WHERE status IN ({','.join('?' * len(statuses))})" if statuses else "")
    out = []
    for row in self.db.execute(query + " ORDER BY idx", statuses):
      row = dict(row)
      row["overrides"], row["coords"] = json.loads(row["overrides"]), json.loads(row["coords"])
      out.append(row)
    return out

  def get(self, name: str) -> dict[str, Any] | None:
    rows = [r for r in self.rows() if r["name"] == name]
    return rows[0] if rows else None

  def sync(self, runs: list[Run]) -> list[dict[str, Any]]:
    """Adds the plan's new runs (next free indices); refuses a run whose overrides changed."""
    known = {r["name"]: r for r in self.rows()}
    next_idx = max((r["idx"] for r in known.values()), default=-1) + 1
    with self.db:
      for run in runs:
        if run.name in known:
          if known[run.name]["overrides"] != json.loads(json.dumps(run.overrides)):
            raise ValueError(
                f"run {run.name} in this sweep dir was planned with other overrides "
                f"({known[run.name]['overrides']}); the sweep config changed. Use a new --workdir.")
          continue
        self.db.execute(
            "INSERT INTO runs (idx, name, overrides, coords, params, tokens, steps, flops, compute, budget, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (next_idx, run.name, json.dumps(run.overrides), json.dumps(run.coords), run.params, run.tokens,
             run.steps, run.flops, run.compute, run.coords.get("budget"), time.time()))
        next_idx += 1
    return self.rows()

  def update(self, name: str, **fields: Any) -> None:
    unknown = set(fields) - set(COLUMNS)
    if unknown:
      raise KeyError(f"no registry columns {sorted(unknown)}")
    fields["updated"] = time.time()
    with self.db:
      self.db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE name = ?",
                      (*fields.values(), name))


@contextlib.contextmanager
def open_registry(sweep_dir: str):
  reg = Registry(sweep_dir)
  try:
    yield reg
  finally:
    reg.close()
