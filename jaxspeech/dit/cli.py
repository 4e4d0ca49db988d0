"""`jaxspeech synthesize --dit WORKDIR [--vocoder WORKDIR] --ref-audio ref.wav --ref-text "..." --text "..."
--out out.wav` and `jaxspeech dit eval --dit WORKDIR [--vocoder WORKDIR] [--split test_unseen]`

Zero-shot TTS as F5-TTS's infer_process does it (`jaxspeech.dit.speak`). Without --vocoder, Griffin-Lim makes
the audio (for listening, not quality).
"""


def add_arguments(parser) -> None:
  """The DiT flags of `jaxspeech synthesize`; shared flags another family already added are kept as they are."""
  g = parser.add_argument_group("flow-matching DiT (--dit)")
  known = set(parser._option_string_actions)  # pylint: disable=protected-access

  def add(flag, **kwargs):
    if flag not in known:
      g.add_argument(flag, **kwargs)

  add("--dit", default=None, help="a dit workdir (trained, or imported with `jaxspeech convert dit`)")
  add("--vocoder", default=None, help="a vocoder workdir (default: Griffin-Lim)")
  add("--ref-audio", default=None, help="the reference clip (any rate; resampled to 24 kHz)")
  add("--ref-text", default="", help="the reference clip's transcript")
  add("--duration", type=float, default=None, help="total seconds, reference included (default: speaking rate)")
  add("--speed", type=float, default=1.0, help="speaking-rate factor for the estimated duration")
  add("--nfe", type=int, default=32, help="ODE steps (F5's pruned grids for 5, 6, 7, 10, 12, 16)")
  add("--cfg-strength", type=float, default=2.0, help="classifier-free guidance w: v_c + w·(v_c − v_u)")
  add("--sway", type=float, default=-1.0, help="sway sampling coefficient s")
  add("--method", choices=("euler", "midpoint"), default="euler")
  add("--weights", choices=("auto", "params", "ema"), default="auto", help="auto: the EMA when the run has one")
  add("--seed", type=int, default=0)


def add_parser(groups) -> None:
  """`jaxspeech dit eval` (light: imports nothing heavy)."""
  dit = groups.add_parser("dit", help="flow-matching DiT jobs: evaluate zero-shot synthesis").add_subparsers(
      dest="command", required=True)
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
  p.add_argument("--nfe", type=int, default=32)
  p.add_argument("--cfg-strength", type=float, default=2.0)
  p.add_argument("--sway", type=float, default=-1.0)
  p.add_argument("--method", choices=("euler", "midpoint"), default="euler")
  p.add_argument("--speed", type=float, default=1.0)
  p.add_argument("--weights", choices=("auto", "params", "ema"), default="auto")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="the JSON to write (default: WORKDIR/zero_shot_eval_SPLIT.json)")
  p.add_argument("--wav-dir", default=None, help="also write each utterance's audio here")
  p.set_defaults(run=evaluate)


def evaluate(args) -> None:
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jaxspeech.dit import evaluate as evaluation  # pylint: disable=import-outside-toplevel

  if args.vocoder_only:
    rows = evaluation.vocoder_rows(args.vocoder, args.data_dir, args.split, count=args.limit, wav_dir=args.wav_dir)
  elif args.dit:
    model, config = load(args.dit, args.weights)
    rows = evaluation.synthesis_rows(model, tokens_of(args.dit, config), args.data_dir, args.split,
                                     jax.random.PRNGKey(args.seed), count=args.limit, vocoder=args.vocoder,
                                     sampling=sampling(args), wav_dir=args.wav_dir)
  else:
    raise ValueError("dit eval needs --dit WORKDIR (or --vocoder-only)")
  means = evaluation.means(rows)
  print(evaluation.table(rows, means))
  workdir = args.vocoder if args.vocoder_only else args.dit
  out = args.out or os.path.join(workdir or ".", f"zero_shot_eval_{args.split}.json")
  settings = {k: v for k, v in vars(args).items() if k not in ("run", "group", "command")}
  with open(out, "w") as f:
    json.dump({"settings": settings, "means": means, "utterances": rows}, f, indent=1)
  print(f"wrote {out}")


def load(workdir: str, weights: str = "auto"):
  """(model holding the workdir's newest params, the config it was built from)."""
  from jaxspeech.dit import family  # pylint: disable=import-outside-toplevel
  from jaxspeech.workdir import Workdir  # pylint: disable=import-outside-toplevel
  return Workdir(workdir).load_model(family.FAMILY, weights=weights)


def tokens_of(workdir: str, config: dict) -> list[str]:
  """The vocabulary a workdir's model reads: the one its training kept there, else its `model.vocab_file` (an
  imported F5 checkpoint's vocab.txt)."""
  import os  # pylint: disable=import-outside-toplevel
  from jaxspeech.dit import vocab  # pylint: disable=import-outside-toplevel
  if os.path.exists(vocab.in_workdir(workdir)):
    return vocab.read(vocab.in_workdir(workdir))
  if config["model"].get("vocab_file"):
    return vocab.read(config["model"]["vocab_file"])
  raise ValueError(f"{workdir} holds no {vocab.FILENAME} and names no model.vocab_file: import it with "
                   "--vocab vocab.txt")


def sampling(args):
  from jaxspeech.dit.speak import Sampling  # pylint: disable=import-outside-toplevel
  return Sampling(nfe=args.nfe, cfg_strength=args.cfg_strength, sway=args.sway, method=args.method,
                  speed=args.speed)


def synthesize(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import soundfile  # pylint: disable=import-outside-toplevel
  from jaxspeech.dit import speak  # pylint: disable=import-outside-toplevel
  from jaxspeech.dit.family import SAMPLE_RATE  # pylint: disable=import-outside-toplevel

  if not args.ref_audio:
    raise ValueError("synthesize with --dit needs --ref-audio (and --ref-text): the voice to clone")
  model, config = load(args.dit, args.weights)
  wav, rate = soundfile.read(args.ref_audio, dtype="float32", always_2d=True)
  out, generated, ref_frames = speak.speak(
      model, tokens_of(args.dit, config), wav.mean(1), rate, args.ref_text, args.text, jax.random.PRNGKey(args.seed),
      vocoder=args.vocoder, duration_seconds=args.duration, sampling=sampling(args))
  soundfile.write(args.out, np.clip(out, -1, 1), SAMPLE_RATE, subtype="PCM_16")
  print(f"wrote {args.out}: {len(out) / SAMPLE_RATE:.2f} s ({generated} frames after the "
        f"{ref_frames}-frame reference, NFE {args.nfe}, {'Griffin-Lim' if args.vocoder is None else args.vocoder})")
