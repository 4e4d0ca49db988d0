"""Process-level settings: glibc malloc tunables, XLA's persistent compilation cache.

XLA allocates each executable's temporary buffer (hundreds of MB for a train step) from the host's
malloc on every call. glibc serves blocks that large with mmap and returns them with munmap, so every
step page-faults its whole temp buffer back in: on CPU that was ~43k faults and 75 ms of kernel time
per AST step (benchmarks/RESULTS.md). With one arena, no mmap and no trimming, the buffer is reused.
These are glibc tunables, read once at process start, so `jaxspeech train|eval` re-executes itself
with them set (same PID, so signals and launchers are unaffected). Set JAXSPEECH_MALLOC_TUNING=0 to
opt out; an existing GLIBC_TUNABLES is left alone.
"""

import os
import platform
import sys

MALLOC_TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"


def wants_malloc_tuning(environ=os.environ) -> bool:
  return (environ.get("JAXSPEECH_MALLOC_TUNING", "1") != "0" and "GLIBC_TUNABLES" not in environ
          and platform.libc_ver()[0] == "glibc")


def reexec_with_malloc_tuning(args: list[str]) -> None:
  """Replace this process with `python *args` under MALLOC_TUNABLES (returns if not wanted)."""
  if not wants_malloc_tuning():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
  os.execve(sys.executable, [sys.executable, *args], env)


def enable_compilation_cache(path: str) -> None:
  """XLA's persistent compilation cache in `path` for every compile that takes over a second."""
  import jax  # not at module level: `jaxspeech train` reads this module before it re-executes itself
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
