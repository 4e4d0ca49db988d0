"""`jaxspeech dit synthesize --dit WORKDIR [--vocoder WORKDIR] --ref-audio ref.wav --ref-text "..." --text "..."
--out out.wav` and `jaxspeech dit eval --dit WORKDIR [--vocoder WORKDIR] [--split test_unseen]`

Zero-shot TTS as F5-TTS's infer_process does it (`jaxspeech.dit.speak`). Without --vocoder, Griffin-Lim makes
the audio (for listening, not quality).
"""

import contextlib
import json
import os
import tempfile

import jax
import numpy as np
import soundfile

from jaxspeech.asr import inference as asr_inference
from jaxspeech.dit import evaluate as evaluation, family, solvers, speak, vocab
from jaxspeech.workdir import Workdir

SYNTHESIZE_FLAG = "--dit"  # `jaxspeech synthesize --dit ...`, the previous spelling of `jaxspeech dit synthesize`


def _sampling_flags(p) -> None:
  p.add_argument("--nfe", type=int, default=32, help="ODE steps of a fixed-grid method (F5's pruned grids for 5, 6, "
                 "7, 10, 12, 16); midpoint and heun evaluate the flow twice a step")
  p.add_argument("--cfg-strength", type=float, default=None, help="classifier-free guidance w: v_c + w·(v_c − v_u) "
                 "(default 2; 0 for the consistency method, whose distilled student has its teacher's guidance)")
  p.add_argument("--sway", type=float, default=-1.0, help="sway sampling coefficient s")
  p.add_argument("--method", choices=solvers.METHODS, default="euler",
                 help="ODE solver (docs/dit.md): fixed-grid euler, midpoint, heun, ab2, adaptive dopri5; "
                      "consistency: a consistency-distilled DiT's 1-4 jumps (--nfe of them)")
  p.add_argument("--rtol", type=float, default=1e-3, help="dopri5's relative tolerance")
  p.add_argument("--atol", type=float, default=1e-4, help="dopri5's absolute tolerance")
  p.add_argument("--speed", type=float, default=1.0, help="speaking-rate factor for the estimated duration")
  p.add_argument("--weights", choices=("auto", "params", "ema"), default="auto", help="auto: the EMA when the run has one")
  p.add_argument("--seed", type=int, default=0)


def add_parser(groups) -> None:
  """`jaxspeech dit synthesize|eval`."""
  dit = groups.add_parser("dit", help="flow-matching DiT: zero-shot synthesis and its evaluation").add_subparsers(
      dest="command", required=True)
  p = dit.add_parser("synthesize", help="zero-shot text to speech in the voice of a reference clip",
                     description=__doc__.split("\n\n")[1])
  p.add_argument("--text", required=True)
  p.add_argument("--out", required=True, help="the wav file to write")
  p.add_argument("--dit", required=True, help="a dit workdir (trained, or imported with `jaxspeech convert dit`)")
  p.add_argument("--vocoder", default=None, help="a vocoder workdir (default: Griffin-Lim)")
  p.add_argument("--ref-audio", default=None, help="the reference clip (any rate; resampled to 24 kHz)")
  p.add_argument("--ref-text", default="", help="the reference clip's transcript")
  p.add_argument("--duration", type=float, default=None, help="total seconds, reference included (default: speaking rate)")
  _sampling_flags(p)
  p.set_defaults(run=synthesize)

  p = dit.add_parser("eval", help="speak a split's sentences in the voice of another clip of each speaker; "
                                  "MCD-DTW, duration ratio and RTF against the recordings")
  p.add_argument("--dit", default=None, help="a dit workdir")
  p.add_argument("--vocoder", default=None, help="a vocoder workdir (default: Griffin-Lim)")
  p.add_argument("--vocoder-only", action="store_true",
                 help="score the vocoder on each recording's own mel instead (no --dit): what a DiT can reach")
  p.add_argument("--data-dir", default="data/synth_speech/1.0.0", help="a speech dataset (`jaxspeech data synth`)")
  p.add_argument("--split", default="test_unseen", help="test_unseen: unseen speakers and sentences; test: "
                                                        "unseen sentences")
  p.add_argument("--limit", type=int, default=8, help="only the first N utterances")
  _sampling_flags(p)
  p.add_argument("--out", default=None, help="the JSON to write (default: WORKDIR/zero_shot_eval_SPLIT.json)")
  p.add_argument("--wav-dir", default=None, help="also write each utterance's audio here")
  p.add_argument("--asr", default=None, help="an asr workdir: adds WER and CER of the speech it transcribes")
  p.set_defaults(run=evaluate)


def evaluate(args) -> None:
  with contextlib.ExitStack() as stack:
    wav_dir = args.wav_dir or (stack.enter_context(tempfile.TemporaryDirectory()) if args.asr else None)
    _evaluate(args, wav_dir)


def _evaluate(args, wav_dir: str | None) -> None:
  if args.vocoder_only:
    rows = evaluation.vocoder_rows(args.vocoder, args.data_dir, args.split, count=args.limit, wav_dir=wav_dir)
  elif args.dit:
    model, config = Workdir(args.dit).load_model(family.FAMILY, weights=args.weights)
    rows = evaluation.synthesis_rows(model, vocab.of_workdir(args.dit, config), args.data_dir, args.split,
                                     jax.random.PRNGKey(args.seed), count=args.limit, vocoder=args.vocoder,
                                     sampling=sampling(args), wav_dir=wav_dir)
  else:
    raise ValueError("dit eval needs --dit WORKDIR (or --vocoder-only)")
  means = evaluation.means(rows)
  if args.asr:
    means.update(asr_inference.judge(asr_inference.Recognizer(args.asr), rows, wav_dir, args.split,
                                     family.SAMPLE_RATE))
  print(evaluation.table(rows, means))
  workdir = args.vocoder if args.vocoder_only else args.dit
  out = args.out or os.path.join(workdir or ".", f"zero_shot_eval_{args.split}.json")
  settings = {k: v for k, v in vars(args).items() if k not in ("run", "group", "command", "argv")}
  with open(out, "w") as f:
    json.dump({"settings": settings, "means": means, "utterances": rows}, f, indent=1)
  print(f"wrote {out}")


def sampling(args) -> speak.Sampling:
  cfg_strength = args.cfg_strength
  if cfg_strength is None:
    cfg_strength = 0.0 if args.method in solvers.FEW_STEP else 2.0
  return speak.Sampling(nfe=args.nfe, cfg_strength=cfg_strength, sway=args.sway, method=args.method,
                        speed=args.speed, rtol=args.rtol, atol=args.atol)


def synthesize(args) -> None:
  if not args.text.strip():
    raise ValueError(f"--text {args.text!r} has nothing to speak")
  if not args.ref_audio:
    raise ValueError("dit synthesize needs --ref-audio (and --ref-text): the voice to clone")
  model, config = Workdir(args.dit).load_model(family.FAMILY, weights=args.weights)
  wav, rate = soundfile.read(args.ref_audio, dtype="float32", always_2d=True)
  out, generated, ref_frames = speak.speak(
      model, vocab.of_workdir(args.dit, config), wav.mean(1), rate, args.ref_text, args.text,
      jax.random.PRNGKey(args.seed), vocoder=args.vocoder, duration_seconds=args.duration, sampling=sampling(args))
  soundfile.write(args.out, np.clip(out, -1, 1), family.SAMPLE_RATE, subtype="PCM_16")
  print(f"wrote {args.out}: {len(out) / family.SAMPLE_RATE:.2f} s ({generated} frames after the "
        f"{ref_frames}-frame reference, NFE {args.nfe}, {'Griffin-Lim' if args.vocoder is None else args.vocoder})")
