"""`jaxspeech llasa synthesize --lm WORKDIR --codec WORKDIR --tokenizer FILE --text "..." [--ref-audio x.wav
--ref-text "..."] --out out.wav`

The Llasa LM writes codec codes for the text (continuing the reference clip's codes when given: voice
prompting), the codec decodes them. `--best-of N` samples N candidates in one batch and keeps the one the
verifiers score best (length/repetition sanity, plus speaker similarity to --ref-audio with --speaker-ast);
`--beams B` runs chunk-wise beam search instead (B beams × --expand samples per --chunk-seconds, same verifiers).
`--draft WORKDIR` decodes speculatively: a small llasa LM over the same vocabulary drafts `--draft-tokens` codes
a round and the LM keeps what its own sampling would (same distribution, fewer LM calls).

`jaxspeech llasa eval --lm WORKDIR --codec WORKDIR --tokenizer FILE [--split test] [--speaker-ast AST] [--limit N]`
speaks held-out corpus sentences and scores them against their recordings (`jaxspeech.llasa.evaluate`): a table
on stdout, every utterance's scores in a JSON. `--resynthesis` scores the codec's encode → decode instead.
"""

import contextlib
import json
import os
import tempfile

import jax
import numpy as np
import soundfile

from jaxspeech.asr import inference as asr_inference
from jaxspeech.audio import io as audio_io, quality
from jaxspeech.codec import family as codec_family, streaming as codec_streaming
from jaxspeech.llasa import evaluate as evaluation, family, generate, speculative, synthesis, verify
from jaxspeech.llasa.vocab import LlasaVocab, SPECIAL_TOKENS
from jaxspeech.workdir import Workdir

SYNTHESIZE_FLAG = "--lm"  # `jaxspeech synthesize --lm ...`, the previous spelling of `jaxspeech llasa synthesize`


def _model_flags(g) -> None:
  g.add_argument("--lm", default=None, help="a llasa workdir (trained, or imported with `jaxspeech convert llasa`)")
  g.add_argument("--codec", default=None, help="a codec workdir whose codes the LM was trained on")
  g.add_argument("--tokenizer", default=None,
                 help="the LM's text tokenizer: a sentencepiece .model or an HF tokenizer.json")
  g.add_argument("--num-speech-tokens", type=int, default=65_536, help="codec codebook size (the LM's speech ids)")


def _sampling_flags(g, max_seconds: float) -> None:
  g.add_argument("--max-seconds", type=float, default=max_seconds)
  g.add_argument("--temperature", type=float, default=0.8)
  g.add_argument("--top-k", type=int, default=0)
  g.add_argument("--top-p", type=float, default=1.0)
  g.add_argument("--repetition-penalty", type=float, default=1.2)
  g.add_argument("--best-of", type=int, default=1, help="candidates to sample; the verifiers keep the best")
  g.add_argument("--seed", type=int, default=0)


def _synthesize_flags(parser) -> None:
  parser.add_argument("--text", required=True)
  parser.add_argument("--out", required=True, help="the wav file to write")
  g = parser.add_argument_group("Llasa LM")
  _model_flags(g)
  g.add_argument("--ref-audio", default=None, help="a reference clip (16 kHz wav) to continue: voice prompting")
  g.add_argument("--ref-text", default="", help="the reference clip's transcript")
  _sampling_flags(g, max_seconds=30.0)
  g.add_argument("--beams", type=int, default=0, help="chunk-wise beam search with this many beams (0 = off)")
  g.add_argument("--expand", type=int, default=2, help="beam search: samples per beam and chunk")
  g.add_argument("--chunk-seconds", type=float, default=1.0, help="beam search: seconds of codes per chunk")
  g.add_argument("--speaker-ast", default=None, help="an AST workdir: adds the speaker-similarity verifier")
  g.add_argument("--draft", default=None, help="a small llasa workdir (same vocabulary): speculative decoding")
  g.add_argument("--draft-tokens", type=int, default=4, help="speculative decoding: tokens drafted per round")
  g = parser.add_argument_group("streaming (--stream: write audio as it is generated, one candidate)")
  g.add_argument("--stream", action="store_true", help="generate and decode chunk by chunk, writing each chunk "
                 "of audio as soon as it is ready")
  g.add_argument("--stream-chunk", type=int, default=25, help="codes per decoded chunk (50 codes = 1 s)")
  g.add_argument("--stream-left", type=int, default=150, help="codes of left context each chunk is decoded with")
  g.add_argument("--stream-lookahead", type=int, default=2, help="codes after a chunk it waits for")


def _sampling(args):
  return generate.Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           repetition_penalty=args.repetition_penalty)


def _load(args, command: str, lm: bool = True):
  """(lm, codec, codec sample rate, vocab, tokenizer) of the flags; with `lm=False` the codec's only."""
  needed = (("--lm", args.lm), ("--codec", args.codec), ("--tokenizer", args.tokenizer)) if lm else (
      ("--codec", args.codec),)
  missing = [flag for flag, value in needed if not value]
  if missing:
    raise ValueError(f"{command} needs {' and '.join(missing)}")
  codec, codec_cfg = Workdir(args.codec).load_model(codec_family.FAMILY)  # a GAN-trained workdir's generator
  sample_rate = int(codec_cfg.model.sample_rate)
  if not lm:
    return None, codec, sample_rate, None, None
  model, _ = Workdir(args.lm).load_model(family.FAMILY)
  vocab = LlasaVocab(model.cfg.vocab_size - len(SPECIAL_TOKENS) - args.num_speech_tokens, args.num_speech_tokens)
  return model, codec, sample_rate, vocab, family.load_tokenizer(args.tokenizer)


def synthesize(args) -> None:
  if not args.text.strip():
    raise ValueError(f"--text {args.text!r} has nothing to speak")
  lm, codec, sample_rate, vocab, tokenizer = _load(args, "llasa synthesize")
  ref_wav = None
  if args.ref_audio:
    wav, rate = soundfile.read(args.ref_audio, dtype="float32", always_2d=True)
    ref_wav = audio_io.resample(wav.mean(1), rate, sample_rate)
  verifiers = [verify.LengthRepetition()]
  if args.speaker_ast:
    if ref_wav is None:
      raise ValueError("--speaker-ast compares with --ref-audio: give both")
    verifiers.append(verify.SpeakerSimilarity(verify.ast_embedder(args.speaker_ast), ref_wav))
  common = dict(ref_wav=ref_wav, ref_text=args.ref_text, max_seconds=args.max_seconds, sampling=_sampling(args),
                sample_rate=sample_rate)
  key = jax.random.PRNGKey(args.seed)
  if args.stream:
    _stream(args, lm, codec, tokenizer, vocab, key, sample_rate, ref_wav)
    return
  if args.beams and args.draft:
    raise ValueError("--draft decodes with --best-of; beam search (--beams) does not take a draft")
  if args.beams:
    result = synthesis.beam_search(lm, codec, tokenizer, vocab, args.text, key, verifiers=verifiers, beams=args.beams,
                                   expand=args.expand, chunk_seconds=args.chunk_seconds, **common)
  else:
    generator = None
    if args.draft:
      generator = speculative.generator(Workdir(args.draft).load_model(family.FAMILY)[0], args.draft_tokens)
    result = synthesis.synthesize(lm, codec, tokenizer, vocab, args.text, key, best_of=args.best_of,
                                  verifiers=verifiers, generator=generator, **common)
  soundfile.write(args.out, np.clip(result.wav, -1, 1), sample_rate, subtype="PCM_16")
  print(f"wrote {args.out}: {len(result.wav) / sample_rate:.2f} s, {len(result.codes)} codes"
        + (f", candidate {result.chosen} of {args.best_of} ({result.scores[result.chosen]})" if result.scores else ""))


def _stream(args, lm, codec, tokenizer, vocab, key, sample_rate: int, ref_wav) -> None:
  clashes = [flag for flag, on in (("--beams", args.beams), ("--best-of", args.best_of > 1), ("--draft", args.draft),
                                   ("--speaker-ast", args.speaker_ast)) if on]
  if clashes:
    raise ValueError(f"--stream writes one candidate as it is generated; it does not take {', '.join(clashes)}")
  chunks = synthesis.stream(lm, codec, tokenizer, vocab, args.text, key, ref_wav=ref_wav, ref_text=args.ref_text,
                            max_seconds=args.max_seconds, sampling=_sampling(args), chunk=args.stream_chunk,
                            left=args.stream_left, lookahead=args.stream_lookahead)
  samples, first = codec_streaming.write(args.out, chunks, sample_rate)
  print(f"streamed {args.out}: {samples / sample_rate:.2f} s" + (f", first audio after {first:.2f} s (compiles "
                                                                 "included)" if first else ", no speech generated"))


def add_parser(groups) -> None:
  """`jaxspeech llasa synthesize|eval`."""
  llasa = groups.add_parser("llasa", help="Llasa LM: synthesize, evaluate synthesis").add_subparsers(
      dest="command", required=True)
  p = llasa.add_parser("synthesize", help="text to speech: the LM writes codec codes, the codec decodes them",
                       description=__doc__.split("\n\n")[1])
  _synthesize_flags(p)
  p.set_defaults(run=synthesize)
  p = llasa.add_parser("eval", help="speak held-out corpus sentences; MCD-DTW, duration ratio, speaker similarity "
                                    "against their recordings")
  _model_flags(p)
  p.add_argument("--data-dir", default="data/synth_speech/1.0.0", help="a speech dataset (`jaxspeech data synth`)")
  p.add_argument("--split", default="test", help="test: unseen sentences; test_unseen: unseen speakers too")
  p.add_argument("--limit", type=int, default=16, help="only the first N utterances")
  p.add_argument("--speaker-ast", default=None, help="an AST workdir: adds speaker similarity (embedding cosine)")
  p.add_argument("--resynthesis", action="store_true",
                 help="score the codec's encode → decode of each recording instead (no --lm): what an LM can reach")
  _sampling_flags(p, max_seconds=20.0)
  p.add_argument("--out", default=None, help="the JSON to write (default: WORKDIR/synthesis_eval_SPLIT.json)")
  p.add_argument("--wav-dir", default=None, help="also write each utterance's audio here")
  p.add_argument("--asr", default=None, help="an asr workdir: adds WER and CER of the speech it transcribes")
  p.set_defaults(run=evaluate)


def evaluate(args) -> None:
  with contextlib.ExitStack() as stack:
    wav_dir = args.wav_dir or (stack.enter_context(tempfile.TemporaryDirectory()) if args.asr else None)
    _evaluate(args, wav_dir)


def _evaluate(args, wav_dir: str | None) -> None:
  lm, codec, sample_rate, vocab, tokenizer = _load(args, "llasa eval", lm=not args.resynthesis)
  common = dict(count=args.limit, embed=verify.ast_embedder(args.speaker_ast) if args.speaker_ast else None,
                sample_rate=sample_rate, wav_dir=wav_dir)
  if args.resynthesis:
    rows = evaluation.resynthesis_rows(codec, args.data_dir, args.split, **common)
  else:
    rows = evaluation.synthesis_rows(lm, codec, tokenizer, vocab, args.data_dir, args.split,
                                     jax.random.PRNGKey(args.seed), max_seconds=args.max_seconds,
                                     sampling=_sampling(args), best_of=args.best_of, **common)
  means = evaluation.means(rows)
  if args.asr:
    means.update(asr_inference.judge(asr_inference.Recognizer(args.asr), rows, wav_dir, args.split, sample_rate))
  print(table(rows, means))
  out = args.out or os.path.join(args.codec if args.resynthesis else args.lm, f"synthesis_eval_{args.split}.json")
  settings = {k: v for k, v in vars(args).items() if k not in ("run", "group", "command", "argv")}
  with open(out, "w") as f:
    json.dump({"settings": settings, "means": means, "utterances": rows}, f, indent=1)
  print(f"wrote {out}")


def table(rows: list[dict], means: dict[str, float]) -> str:
  return quality.table(rows, means, (("mcd_dtw", "MCD dB", 7), ("duration_ratio", "dur", 5),
                                     ("speaker_similarity", "spk sim", 7), ("wer", "WER", 5), ("cer", "CER", 5),
                                     ("wall_seconds", "wall s", 6)))
