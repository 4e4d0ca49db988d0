"""`jaxspeech asr transcribe --asr WORKDIR [--stream] AUDIO...` and `jaxspeech asr eval --asr WORKDIR [--split test]`.

Greedy CTC decoding with a trained (or imported) asr workdir; `eval` scores a split's recordings against their
transcripts (WER and CER of normalised text: lower case, letters and apostrophes) and writes every utterance's
result to a JSON.
"""

import json
import os

import soundfile
import tqdm

from jaxspeech.asr import evaluate, family, inference
from jaxspeech.audio import io as audio_io
from jaxspeech.data import tfds_io


def _transcribe(args) -> None:
  recognizer = inference.Recognizer(args.asr, args.weights, stream=args.stream)
  for path in args.audio:
    wav, rate = soundfile.read(path, dtype="float32", always_2d=True)
    print(f"{path}\t{recognizer.transcribe([wav.mean(1)], rate)[0]}")


def _eval(args) -> None:
  recognizer = inference.Recognizer(args.asr, args.weights)
  source = tfds_io.data_source(args.data_dir, args.split)
  count = min(len(source), args.limit or len(source))
  records = [source[i] for i in tqdm.trange(count, desc="reading", unit="utt")]
  wavs = [audio_io.resample(audio_io.to_float(r["audio"]), int(r["sample_rate"]), family.SAMPLE_RATE) for r in records]
  hyps = []
  for start in tqdm.trange(0, count, args.batch_size, desc="transcribing", unit="batch"):
    hyps += recognizer.transcribe(wavs[start:start + args.batch_size], family.SAMPLE_RATE, args.batch_size)
  rows = [{"index": i, "speaker": r["speaker"].decode(), "text": r["text"].decode(), "transcript": h,
           **{k: e / max(n, 1) for k, (e, n) in evaluate.errors(h, r["text"].decode()).items()}}
          for i, (r, h) in enumerate(zip(records, hyps))]
  rates = evaluate.rates((r["transcript"], r["text"]) for r in rows)
  print(f"{args.split}: {count} utterances, WER {rates['wer']:.2%}, CER {rates['cer']:.2%}")
  out = args.out or os.path.join(args.asr, f"asr_eval_{args.split}.json")
  with open(out, "w") as f:
    json.dump({"settings": {k: v for k, v in vars(args).items() if k not in ("run", "group", "command", "argv")},
               **rates, "utterances": rows}, f, indent=1)
  print(f"wrote {out}")


def add_parser(groups) -> None:
  """`jaxspeech asr transcribe|eval`."""
  asr = groups.add_parser("asr", help="speech recognition: transcribe audio, score WER and CER").add_subparsers(
      dest="command", required=True)
  p = asr.add_parser("transcribe", help="print each audio file's transcript", description=__doc__.split("\n\n")[0])
  p.add_argument("--asr", required=True, help="an asr workdir (trained, or imported with `jaxspeech convert asr`)")
  p.add_argument("--weights", choices=("auto", "params", "ema"), default="auto")
  p.add_argument("--stream", action="store_true",
                  help="run the model chunk by chunk with its caches (a model trained for streaming, e.g. "
                       "configs/asr.py:tiny_streaming); same transcript as without")
  p.add_argument("audio", nargs="+", help="audio files (any rate; resampled to 16 kHz)")
  p.set_defaults(run=_transcribe)
  p = asr.add_parser("eval", help="WER and CER of a split's recordings against their transcripts")
  p.add_argument("--asr", required=True, help="an asr workdir")
  p.add_argument("--weights", choices=("auto", "params", "ema"), default="auto")
  p.add_argument("--data-dir", default="data/synth_speech/1.0.0", help="a speech dataset (`jaxspeech data synth`)")
  p.add_argument("--split", default="test", help="test: unseen sentences; test_unseen: unseen speakers too")
  p.add_argument("--limit", type=int, default=None, help="only the first N utterances")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--out", default=None, help="the JSON to write (default: WORKDIR/asr_eval_SPLIT.json)")
  p.set_defaults(run=_eval)
