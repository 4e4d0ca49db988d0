"""The HF tokenizer files of `jaxspeech convert asr`.

Import copies an HF ParakeetForCTC directory's tokenizer files (`text.HF_FILES`) into the workdir, which then
decodes with them (`text.HFTokenizer`). Export writes the workdir's tokenizer beside the model, as the
`ParakeetTokenizer` that `AutoTokenizer`, `AutoProcessor` and the ASR pipeline load:

- imported from HF: the files the import copied, as they were;
- a sentencepiece model (WORKDIR/tokenizer.model): its pieces at their ids (`jaxspeech.text.hf_tokenizer`);
- characters: the 28 of `text.ALPHABET` at their ids, text normalised as `text.normalize` does (none when
  the model's vocab_size is not theirs + 1: an HF checkpoint imported without its tokenizer);

the last two followed by `<blank>`, the blank, as the pad token that ParakeetTokenizer's decode drops after
merging repeated ids. processor_config.json pairs it with a `ParakeetFeatureExtractor` of the model's mel bins;
its other settings are HF's defaults, which `parakeet_features` computes.
"""

import json
import os

import tokenizers
from tokenizers import decoders, normalizers, Regex

from jaxspeech import storage
from jaxspeech.asr import text
from jaxspeech.asr.model import ASRConfig
from jaxspeech.convert.mapping import ConversionError
from jaxspeech.text import hf_tokenizer

BLANK = "<blank>"
PROCESSOR_CONFIG = "processor_config.json"


def read(src: str, cfg: ASRConfig) -> tuple[dict[str, bytes], list[str]]:
  """The tokenizer files in `src` (file name -> content), or none and a note. A ConversionError when they would
  decode otherwise than ParakeetTokenizer: a pad token that is not the blank, or spaces cleaned up."""
  files = {}
  for name in text.HF_FILES:
    if os.path.isfile(os.path.join(src, name)):
      with open(os.path.join(src, name), "rb") as f:
        files[name] = f.read()
  if text.HF_FILES[0] not in files:
    return {}, [f"{src} has no {text.HF_FILES[0]}: the workdir decodes ids as the characters of "
                "jaxspeech.asr.text.ALPHABET"]
  tokenizer = text.HFTokenizer(src)
  checks = (
      (f"pad_token={tokenizer.config.get('pad_token')!r} (id {tokenizer.pad_id}) is not the blank, "
       f"id {cfg.blank_id}", tokenizer.pad_id == cfg.blank_id),
      ("clean_up_tokenization_spaces=true with a model other than BPE is not supported", not tokenizer.cleans_up),
  )
  problems = [message for message, ok in checks if not ok]
  if problems:
    raise ConversionError(f"HF tokenizer in {src}", problems)
  return files, []


def characters() -> tokenizers.Tokenizer:
  """`text.Characters` with `BLANK` after the characters."""
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={c: i for i, c in enumerate(text.ALPHABET)}, merges=[]))
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.Lowercase(), normalizers.Replace(Regex("[^a-z' ]+"), " "), normalizers.Replace(Regex(" {2,}"), " "),
      normalizers.Strip()])
  tokenizer.decoder = decoders.Fuse()
  tokenizer.add_special_tokens([tokenizers.AddedToken(BLANK, normalized=False, special=True)])
  return tokenizer


def processor_config(cfg: ASRConfig) -> dict:
  return {"processor_class": "ParakeetProcessor", "decoder_type": "ctc",
          "feature_extractor": {"feature_extractor_type": "ParakeetFeatureExtractor", "feature_size": cfg.num_mel_bins}}


def write(workdir: str, cfg: ASRConfig, dst: str) -> list[str]:
  """The workdir's tokenizer and processor_config.json in `dst`; lines to print."""
  tokenizer = text.of_workdir(workdir)
  if isinstance(tokenizer, text.Characters) and cfg.vocab_size != len(text.ALPHABET) + 1:
    return [f"no tokenizer: {workdir} has none, and vocab_size={cfg.vocab_size} is not {len(text.ALPHABET)} "
            "characters + blank"]
  if isinstance(tokenizer, text.HFTokenizer):
    names = [name for name in text.HF_FILES if storage.exists(storage.join(workdir, name))]
    for name in names:
      with open(os.path.join(dst, name), "wb") as f:
        f.write(storage.read_bytes(storage.join(workdir, name)))
    what = "the HF tokenizer it was imported with"
  else:
    if isinstance(tokenizer, text.Characters):
      hf, what = characters(), f"its {len(text.ALPHABET)} characters"
    else:
      hf, what = hf_tokenizer.from_sentencepiece(tokenizer.model_proto, [(BLANK, True)]), "its sentencepiece model"
    if (hf.get_vocab_size(), hf.token_to_id(BLANK)) != (cfg.vocab_size, cfg.blank_id):
      raise ConversionError(f"the tokenizer of {workdir}", [
          f"{what} and {BLANK} are {hf.get_vocab_size()} ids, {BLANK} at {hf.token_to_id(BLANK)}; the model has "
          f"vocab_size={cfg.vocab_size}, the blank at {cfg.blank_id}"])
    names = hf_tokenizer.save(hf, dst, pad_token=BLANK, tokenizer_class="ParakeetTokenizer")
  with open(os.path.join(dst, PROCESSOR_CONFIG), "w") as f:
    json.dump(processor_config(cfg), f, indent=2)
  return [f"{', '.join(names)} and {PROCESSOR_CONFIG}: {what}"]
