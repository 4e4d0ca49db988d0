"""`jaxspeech synthesize --dit WORKDIR [--vocoder WORKDIR] --ref-audio ref.wav --ref-text "..." --text "..."
--out out.wav`

Zero-shot TTS as F5-TTS's infer_process does it: the reference clip (24 kHz, RMS raised to 0.1 when
quieter) prompts the DiT with its transcript followed by the new text; the duration comes from the
reference's speaking rate (or --duration, total seconds with the reference); the sampled mel past the
reference is vocoded. Without --vocoder, Griffin-Lim makes the audio (for listening, not quality).
"""

PROG = "jaxspeech synthesize"
TARGET_RMS = 0.1


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


def load(workdir: str, weights: str = "auto"):
  """(model holding the workdir's newest params, the workdir's config.json)."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jaxspeech.convert import mapping, workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from jaxspeech.dit.model import build, config_from  # pylint: disable=import-outside-toplevel
  checkpoint = workdir_lib.read(workdir, "dit", weights=weights)
  cfg = config_from(checkpoint.model)
  model = nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, mapping.unflatten(checkpoint.params))
  nnx.update(model, state)
  with open(os.path.join(workdir, "config.json")) as f:
    return model, json.load(f)


def tokens_of(config: dict) -> list[str]:
  """The vocabulary a workdir's model reads: its `model.vocab_file`, else its dataset's."""
  from jaxspeech.dit import vocab  # pylint: disable=import-outside-toplevel
  if config["model"].get("vocab_file"):
    return vocab.read(config["model"]["vocab_file"])
  if config.get("data", {}).get("path"):
    return vocab.for_dataset(config["data"]["path"])
  raise ValueError("the dit workdir names no vocabulary: import it with --vocab vocab.txt")


def vocode(vocoder: str | None, mel_TxM):
  """Audio at 24 kHz from a log-mel: the vocoder workdir's, or Griffin-Lim."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if vocoder is None:
    from jaxspeech.audio.griffin_lim import griffin_lim  # pylint: disable=import-outside-toplevel
    return griffin_lim(np.asarray(mel_TxM))
  from jaxspeech.codec.vocoder import vocode as vocoder_vocode  # pylint: disable=import-outside-toplevel
  return np.asarray(vocoder_vocode(vocoder, np.asarray(mel_TxM)[None])[0])


def synthesize(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import soundfile  # pylint: disable=import-outside-toplevel
  from jaxspeech.audio import features, io as audio_io  # pylint: disable=import-outside-toplevel
  from jaxspeech.dit import sample, vocab  # pylint: disable=import-outside-toplevel
  from jaxspeech.dit.family import HOP, SAMPLE_RATE  # pylint: disable=import-outside-toplevel

  if not args.ref_audio:
    raise ValueError("synthesize with --dit needs --ref-audio (and --ref-text): the voice to clone")
  model, config = load(args.dit, args.weights)
  wav, rate = soundfile.read(args.ref_audio, dtype="float32", always_2d=True)
  wav = audio_io.resample(wav.mean(1), rate, SAMPLE_RATE)
  rms = float(np.sqrt(np.mean(np.square(wav))))
  if rms < TARGET_RMS:
    wav = wav * TARGET_RMS / max(rms, 1e-8)
  ref_mel_TxM = np.asarray(features.log_mel(wav, SAMPLE_RATE, hop_length=HOP, n_mels=model.cfg.mel_dim))
  ref_text = args.ref_text if args.ref_text.endswith(" ") else args.ref_text + " "
  ref_frames = len(wav) // HOP
  if args.duration:
    duration = int(args.duration * SAMPLE_RATE / HOP)
  else:
    duration = sample.durations(ref_frames, ref_text, args.text, args.speed)
  text = vocab.encode(ref_text + args.text, tokens_of(config))[None]
  mel_BxLxM, duration_B = sample.sample(
      model, ref_mel_TxM[None], [len(ref_mel_TxM)], text, [duration], jax.random.PRNGKey(args.seed), nfe=args.nfe,
      cfg_strength=args.cfg_strength, sway=args.sway, method=args.method)
  generated_TxM = np.asarray(mel_BxLxM[0, ref_frames:int(duration_B[0])])
  out = vocode(args.vocoder, generated_TxM)
  if rms < TARGET_RMS:
    out = out * rms / TARGET_RMS
  soundfile.write(args.out, np.clip(out, -1, 1), SAMPLE_RATE, subtype="PCM_16")
  print(f"wrote {args.out}: {len(out) / SAMPLE_RATE:.2f} s ({len(generated_TxM)} frames after the "
        f"{ref_frames}-frame reference, NFE {args.nfe}, {'Griffin-Lim' if args.vocoder is None else args.vocoder})")
