"""Input-pipeline and feature throughput on a jaxspeech dataset (a benchmark: it measures, it asserts nothing).

    .venv/bin/jaxspeech data synth --data-dir data      # the default corpus, once
    .venv/bin/python benchmarks/data_pipeline.py --dataset data/synth_speech/1.0.0 [--seconds 4] [--write]

Measures, on the `train` split:
  source        raw random access `source[i]` of the TFDS ArrayRecord data source (read + parse), one thread
  pipeline      `pipeline.make_pipeline` with `DecodeSpeech` resampling to 16 and 24 kHz, in fixed-batch and
                frame-budget mode, with worker_count 0 and 2: start-up (construction to first batch) and the
                steady state after warm-up (best window and mean), in records/s and seconds of audio/s
  features      jitted `features.log_mel` (24 kHz, F5-TTS convention) and `features.kaldi_fbank` (16 kHz, AST)
                on a batch of 8 x 10 s, after compilation, with and without `lengths_B`, in frames/s (fastest call)

Prints a markdown table; `--write` replaces (or appends) the section in benchmarks/RESULTS.md.
Pipeline workers are spawned processes that re-import this file, hence the `__main__` guard at the end.
"""

import argparse
import dataclasses
import datetime
import os
import sys
import time

import common

import numpy as np

SECTION = "Input pipeline and features (Foundation I)"
RESULTS = common.RESULTS
VERSIONS = ("jax", "grain", "array_record", "tensorflow-datasets", "soxr", "numpy")
FIXED_BATCH = 8
BUDGET_FRAMES = 38_400  # F5-TTS's per-GPU frame budget
BUFFER = 256  # FrameBudget buffer_size here (the library default is 1000); start-up decodes one buffer
FEATURE_BATCH, FEATURE_SECONDS = 8, 10
WINDOW_SECONDS = 0.5  # fixed-batch steady state is timed in windows of at least this long
LOAD_AT_START = None  # 1-minute load average when main() starts: other work on the machine skews the figures


class CpuShare:
  """The share of the machine's CPU time that other processes used between `__init__` and `other()`.

  From /proc/stat (all busy time) minus this process's and its reaped children's (the workers') CPU time.
  """

  def __init__(self):
    self._start = self._sample()

  @staticmethod
  def _sample():
    import resource
    try:
      with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
      return None
    hz = os.sysconf("SC_CLK_TCK")
    total, idle = sum(ticks[:8]) / hz, (ticks[3] + ticks[4]) / hz  # user..steal; idle + iowait
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))
    return total, total - idle, own

  def other(self) -> float | None:
    end = self._sample()
    if self._start is None or end is None:
      return None
    total, busy, own = (b - a for a, b in zip(self._start, end))
    return max(0.0, (busy - own) / total) if total > 0 else None


@dataclasses.dataclass
class Row:
  group: str
  case: str
  figures: dict  # column → value (str)


def _fmt(x: float, digits: int = 3) -> str:
  if x >= 10 ** digits:
    return f"{x:,.0f}"
  return f"{x:.{digits}g}"


def bench_source(source, seconds: float) -> Row:
  rng = np.random.default_rng(0)
  for i in rng.integers(0, len(source), 16):  # warm the file handles
    source[int(i)]
  n, samples, start = 0, 0, time.perf_counter()
  while time.perf_counter() - start < seconds or n < 100:
    record = source[int(rng.integers(0, len(source)))]
    samples += len(record["audio"]) / int(record["sample_rate"])
    n += 1
  elapsed = time.perf_counter() - start
  return Row("source", "TFDS ArrayRecord `source[i]`, random i, 1 thread",
             {"records/s": _fmt(n / elapsed), "audio s/s": _fmt(samples / elapsed), "start-up s": "",
              "n": f"{n} records"})


def _pipeline_spec(mode: str, rate: int):
  from jaxspeech.data import batching
  hop = 256 if rate == 24_000 else 160  # the mel hop (F5-TTS) or the 10 ms fbank shift (AST)
  if mode == "fixed":
    return batching.FixedBatch(FIXED_BATCH, "audio", batching.Buckets(multiple=rate // 2)), None
  spec = batching.FrameBudget(BUDGET_FRAMES, "audio", batching.Buckets(multiple=hop * 32), hop=hop,
                              buffer_size=BUFFER)
  return spec, BUFFER


def bench_pipeline(source, rate: int, mode: str, workers: int, seconds: float) -> Row:
  """Start-up = construction to first batch. Steady state: after warm-up, whole batches for >= `seconds`.

  The steady state is timed in windows: >= WINDOW_SECONDS of whole batches in fixed-batch mode; one buffer in
  frame-budget mode, whose batches come out in a burst once the buffer is decoded, so a window runs from the
  first batch of one buffer to the first batch of the next. Reports the best window and the mean of all.
  """
  from jaxspeech.data import pipeline
  spec, buffer = _pipeline_spec(mode, rate)
  start = time.perf_counter()
  ds = pipeline.make_pipeline(source, seed=0, map_fn=pipeline.DecodeSpeech(rate), batching=spec,
                              shard_index=0, shard_count=1, worker_count=workers)
  iterator = pipeline.make_iterator(ds)
  batch = next(iterator)
  startup = time.perf_counter() - start
  rows = int(batch["valid"].sum())
  if buffer is None:
    for _ in range(2 * pipeline.READ_OPTIONS.prefetch_buffer_size // FIXED_BATCH):  # drain the prefetched records
      next(iterator)
  else:
    while rows % buffer:  # the rest of the first buffer
      rows += int(next(iterator)["valid"].sum())
    batch = next(iterator)  # first batch of the next buffer: the clock starts here
    rows += int(batch["valid"].sum())
  # Windows of whole batches (fixed) or whole buffers (frame budget); the best window is the least disturbed
  # by other work on the machine, the total is the plain average.
  t0 = time.perf_counter()
  windows, window = [], [0, 0, t0] if buffer is None else [int(batch["valid"].sum()), int(batch["audio_lengths"].sum()), t0]
  while True:
    batch = next(iterator)
    now = time.perf_counter()
    n, s = int(batch["valid"].sum()), int(batch["audio_lengths"].sum())
    rows += n
    opened = buffer is not None and (rows - n) % buffer == 0  # this batch opened a new buffer
    if opened:  # close the window at the previous buffer; this batch starts the next one
      windows.append((window[0], window[1], now - window[2]))
      window = [n, s, now]
    else:
      window[0] += n
      window[1] += s
      if buffer is None and now - window[2] >= WINDOW_SECONDS:
        windows.append((window[0], window[1], now - window[2]))
        window = [0, 0, now]
    if now - t0 >= seconds and windows and (buffer is None and window[0] == 0 or opened):
      break
  records, samples, elapsed = (sum(w[i] for w in windows) for i in range(3))
  best = max(windows, key=lambda w: w[0] / w[2])
  stats = pipeline.pipeline_stats(iterator)
  if hasattr(iterator, "close"):
    iterator.close()
  name = {"fixed": f"FixedBatch({FIXED_BATCH})", "budget": f"FrameBudget({BUDGET_FRAMES:,} frames, buffer {BUFFER})"}
  skipped = sum(stats.get(k, 0) for k in ("read_errors", "decode_errors", "too_long"))
  return Row("pipeline", f"22.05→{rate // 1000} kHz, {name[mode]}, worker_count={workers}",
             {"records/s": _fmt(best[0] / best[2]), "audio s/s": _fmt(best[1] / rate / best[2]),
              "records/s (mean)": _fmt(records / elapsed),
              "start-up s": f"{startup:.2f}", "padding efficiency": f"{stats.get('efficiency', float('nan')):.3f}",
              "n": f"{records} records in {len(windows)} windows" + (f", {skipped} skipped" if skipped else "")})


def bench_feature(name: str, with_lengths: bool, seconds: float) -> Row:
  import jax
  from jaxspeech.audio import features
  from jaxspeech.audio.io import resample, to_float
  from jaxspeech.data.synth import espeak
  rate = 24_000 if name == "log_mel" else 16_000
  fn = features.log_mel if name == "log_mel" else features.kaldi_fbank
  speech = to_float(espeak.synthesize("The quick brown fox jumps over the lazy dog while the river waits. " * 3))
  speech = resample(speech, espeak.SAMPLE_RATE, rate)
  size = FEATURE_SECONDS * rate
  wav_BxS = np.stack([np.resize(np.roll(speech, 997 * b), size) for b in range(FEATURE_BATCH)]).astype(np.float32)
  wav_BxS = jax.device_put(wav_BxS)
  kwargs = {"lengths_B": jax.device_put(np.full(FEATURE_BATCH, size, np.int32))} if with_lengths else {}
  start = time.perf_counter()
  out = jax.block_until_ready(fn(wav_BxS, **kwargs))
  compile_s = time.perf_counter() - start
  feats = out[0] if with_lengths else out
  frames = feats.shape[0] * feats.shape[1]
  for _ in range(2):
    jax.block_until_ready(fn(wav_BxS, **kwargs))
  times, t0 = [], time.perf_counter()
  while time.perf_counter() - t0 < seconds or len(times) < 5:
    t = time.perf_counter()
    jax.block_until_ready(fn(wav_BxS, **kwargs))
    times.append(time.perf_counter() - t)
  calls, per_call = len(times), min(times)  # the fastest call: the least disturbed by other work
  label = {"log_mel": "`log_mel` 24 kHz (n_fft 1024, hop 256, 100 mels)",
           "kaldi_fbank": "`kaldi_fbank` 16 kHz (25/10 ms, 128 bins)"}[name]
  return Row("features", f"{label}, {FEATURE_BATCH}×{FEATURE_SECONDS} s" + (", lengths_B" if with_lengths else ""),
             {"frames/s": _fmt(frames / per_call), "audio s/s": _fmt(FEATURE_BATCH * FEATURE_SECONDS / per_call),
              "start-up s": f"{compile_s:.2f}", "n": f"{calls} calls of {frames} frames"})


def table(rows: list[Row]) -> str:
  out = []
  for group, columns in (("source", ("records/s", "audio s/s", "n")),
                         ("pipeline", ("records/s", "audio s/s", "records/s (mean)", "start-up s", "padding efficiency", "n")),
                         ("features", ("frames/s", "audio s/s", "start-up s", "n"))):
    selected = [r for r in rows if r.group == group]
    if not selected:
      continue
    heads = [c if c != "start-up s" else ("compile s" if group == "features" else "start-up s") for c in columns]
    out.append(f"| {group} | " + " | ".join(heads) + " |")
    out.append("|---|" + "---:|" * len(columns))
    out += [f"| {r.case} | " + " | ".join(r.figures.get(c, "") for c in columns) + " |" for r in selected]
    out.append("")
  return "\n".join(out)


def section(rows: list[Row], args, dataset_desc: str, cpu_other: float | None) -> str:
  today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()  # = `date -u +%F`
  load = f"{LOAD_AT_START:.2f}" if LOAD_AT_START is not None else "unknown"
  other = "an unknown share" if cpu_other is None else f"{100 * cpu_other:.0f} %"
  return f"""## {SECTION}

Written by `benchmarks/data_pipeline.py --dataset {args.dataset} --seconds {args.seconds:g} --write`.

- Date: {today} (UTC)
- Machine: {common.machine()}; load average {load} before the run, other processes used {other} of the CPU time
  during it
- Software: {common.versions(VERSIONS)}
- Dataset: {dataset_desc}

{table(rows)}
Notes:
- Pipelines read the `train` split with `shard_count=1`, shuffle on, repeat forever, the default read options
  (`num_threads={_read_threads()}`, prefetch 32) and a 2-batch thread prefetch; `DecodeSpeech` resamples each
  22,050 Hz record whole with soxr VHQ (no crop). Fixed batches pad to half-second buckets; frame-budget batches
  count mel frames (hop 256 at 24 kHz, 160 at 16 kHz) in buckets of 32 frames, buffer {BUFFER} records.
- Padding efficiency is `pipeline_stats(...)["efficiency"]`: real samples / padded samples over the batches taken.
- Start-up is from `make_pipeline` to the first batch: it includes spawning and importing the workers, and in
  frame-budget mode decoding the whole first buffer. The steady state follows a warm-up (the prefetched records,
  or the first buffer) and runs for at least the given seconds, timed in windows of whole batches (>= {WINDOW_SECONDS:g} s)
  or, in frame-budget mode, of one whole buffer each. records/s and audio s/s are the best window, the one least
  disturbed by other work on the machine; "records/s (mean)" is the whole steady state.
- Features: one jitted call per batch on float32 input, timed with `block_until_ready` after compilation ("compile s"
  is the first call); the figures use the fastest call. frames/s counts output frames ({FEATURE_BATCH} × frames per
  call); audio s/s is seconds of input audio per second. `lengths_B` selects the padded-batch path (per-example
  reflect padding).
- Other work on the machine lowers every figure (see the CPU share above); the best-window and fastest-call
  figures are the least affected.
"""


def _read_threads() -> int:
  from jaxspeech.data import pipeline
  return pipeline.READ_OPTIONS.num_threads


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, help="a dataset directory (NAME/VERSION), e.g. data/synth_speech/1.0.0")
  parser.add_argument("--split", default="train")
  parser.add_argument("--seconds", type=float, default=4.0, help="steady-state time per pipeline / feature case")
  parser.add_argument("--write", action="store_true", help=f"replace the section in {os.path.relpath(RESULTS)}")
  args = parser.parse_args()
  global LOAD_AT_START
  LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

  from jaxspeech.data import tfds_io
  source = tfds_io.data_source(args.dataset, args.split)
  meta = tfds_io.metadata(args.dataset)
  seconds = sum(len(source[i]["audio"]) / int(source[i]["sample_rate"]) for i in range(len(source)))
  dataset_desc = (f"`{os.path.relpath(args.dataset)}` split `{args.split}`: {len(source)} records, "
                  f"{seconds / 60:.1f} min of audio (mean {seconds / len(source):.1f} s)"
                  + (f" at {meta['sample_rate']} Hz" if meta.get("sample_rate") else ""))
  started, cpu = time.perf_counter(), CpuShare()
  rows = [bench_source(source, min(args.seconds, 2.0))]
  print(table(rows), flush=True)
  for rate in (16_000, 24_000):
    for mode in ("fixed", "budget"):
      for workers in (0, 2):
        rows.append(bench_pipeline(source, rate, mode, workers, args.seconds))
        r = rows[-1]
        print(f"{r.case}: {r.figures}", flush=True)
  for name in ("log_mel", "kaldi_fbank"):
    for with_lengths in (False, True):
      rows.append(bench_feature(name, with_lengths, min(args.seconds, 3.0)))
      print(f"{rows[-1].case}: {rows[-1].figures}", flush=True)
  text = section(rows, args, dataset_desc, cpu.other())
  print()
  print(text)
  print(f"(benchmark took {time.perf_counter() - started:.0f} s)", file=sys.stderr)
  if args.write:
    common.write_section(SECTION, text)
    print(f"wrote the section {SECTION!r} of {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
  main()
