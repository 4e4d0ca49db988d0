"""`jaxspeech synthesize --lm WORKDIR --codec WORKDIR --text "..." [--ref-audio x.wav --ref-text "..."] --out out.wav`

The Llasa LM writes codec codes for the text (continuing the reference clip's codes when given: voice
prompting), the codec decodes them. `--best-of N` samples N candidates in one batch and keeps the one the
verifiers score best (length/repetition sanity, plus speaker similarity to --ref-audio with --speaker-ast);
`--beams B` runs chunk-wise beam search instead (B beams × --expand samples per --chunk-seconds, same verifiers).
"""

PROG = "jaxspeech synthesize"


def add_arguments(parser) -> None:
  """The Llasa flags of `jaxspeech synthesize` (light: imports nothing heavy)."""
  g = parser.add_argument_group("Llasa LM (--lm)")
  g.add_argument("--lm", default=None, help="a llasa workdir (trained, or imported with `jaxspeech convert llasa`)")
  g.add_argument("--codec", default=None, help="a codec workdir whose codes the LM was trained on")
  g.add_argument("--tokenizer", default=None,
                 help="the LM's text tokenizer: a sentencepiece .model or an HF tokenizer.json")
  g.add_argument("--num-speech-tokens", type=int, default=65_536, help="codec codebook size (the LM's speech ids)")
  g.add_argument("--ref-audio", default=None, help="a reference clip (16 kHz wav) to continue: voice prompting")
  g.add_argument("--ref-text", default="", help="the reference clip's transcript")
  g.add_argument("--max-seconds", type=float, default=30.0)
  g.add_argument("--temperature", type=float, default=0.8)
  g.add_argument("--top-k", type=int, default=0)
  g.add_argument("--top-p", type=float, default=1.0)
  g.add_argument("--repetition-penalty", type=float, default=1.2)
  g.add_argument("--best-of", type=int, default=1, help="candidates to sample; the verifiers keep the best")
  g.add_argument("--beams", type=int, default=0, help="chunk-wise beam search with this many beams (0 = off)")
  g.add_argument("--expand", type=int, default=2, help="beam search: samples per beam and chunk")
  g.add_argument("--chunk-seconds", type=float, default=1.0, help="beam search: seconds of codes per chunk")
  g.add_argument("--speaker-ast", default=None, help="an AST workdir: adds the speaker-similarity verifier")
  g.add_argument("--seed", type=int, default=0)


def synthesize(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import soundfile  # pylint: disable=import-outside-toplevel
  from jaxspeech.audio import io as audio_io  # pylint: disable=import-outside-toplevel
  from jaxspeech.llasa import family, generate, synthesis, verify  # pylint: disable=import-outside-toplevel
  from jaxspeech.text.llasa_vocab import LlasaVocab, SPECIAL_TOKENS  # pylint: disable=import-outside-toplevel

  missing = [flag for flag, value in (("--codec", args.codec), ("--tokenizer", args.tokenizer)) if not value]
  if missing:
    raise ValueError(f"synthesize with --lm needs {' and '.join(missing)}")
  lm, _ = synthesis.load_workdir_model(args.lm, "llasa")
  codec, codec_cfg = synthesis.load_workdir_model(args.codec, "codec")
  sample_rate = int(codec_cfg.model.sample_rate)
  vocab = LlasaVocab(lm.cfg.vocab_size - len(SPECIAL_TOKENS) - args.num_speech_tokens, args.num_speech_tokens)
  tokenizer = family.load_tokenizer(args.tokenizer)
  ref_wav = None
  if args.ref_audio:
    wav, rate = soundfile.read(args.ref_audio, dtype="float32", always_2d=True)
    ref_wav = audio_io.resample(wav.mean(1), rate, sample_rate)
  verifiers = [verify.LengthRepetition()]
  if args.speaker_ast:
    if ref_wav is None:
      raise ValueError("--speaker-ast compares with --ref-audio: give both")
    verifiers.append(verify.SpeakerSimilarity(verify.ast_embedder(args.speaker_ast), ref_wav))
  sampling = generate.Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               repetition_penalty=args.repetition_penalty)
  common = dict(ref_wav=ref_wav, ref_text=args.ref_text, max_seconds=args.max_seconds, sampling=sampling,
                sample_rate=sample_rate)
  key = jax.random.PRNGKey(args.seed)
  if args.beams:
    result = synthesis.beam_search(lm, codec, tokenizer, vocab, args.text, key, verifiers=verifiers, beams=args.beams,
                                   expand=args.expand, chunk_seconds=args.chunk_seconds, **common)
  else:
    result = synthesis.synthesize(lm, codec, tokenizer, vocab, args.text, key, best_of=args.best_of,
                                  verifiers=verifiers, **common)
  soundfile.write(args.out, np.clip(result.wav, -1, 1), sample_rate, subtype="PCM_16")
  print(f"wrote {args.out}: {len(result.wav) / sample_rate:.2f} s, {len(result.codes)} codes"
        + (f", candidate {result.chosen} of {args.best_of} ({result.scores[result.chosen]})" if result.scores else ""))
