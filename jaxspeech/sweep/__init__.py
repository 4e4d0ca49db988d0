"""Scaling-law sweeps: design runs, run them (locally, as SLURM arrays or xpk workloads), record them in
SQLite, fit L(N, D) and the compute-optimal frontier, and report.

  jaxspeech sweep run --config=configs/sweeps/ast_cpu.py --workdir=DIR [--backend local|slurm|xpk]
  jaxspeech sweep fit --workdir=DIR

Modules: `design` (grids, IsoFLOP designs, width/depth rules), `counts` (params, tokens and FLOPs of a
resolved config), `registry` (the SQLite table), `execute` (one `jaxspeech train` run and its outcome),
`backends` (local, slurm, xpk), `guard` (train processes die with their runner), `fit` (the parametric
law and IsoFLOP fits), `report` (report.md, PNGs, fit.json), `cli`.
"""
