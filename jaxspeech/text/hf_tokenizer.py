"""A sentencepiece BPE model (`jaxspeech text train`) as an HF fast tokenizer: tokenizer.json,
tokenizer_config.json and special_tokens_map.json, which `transformers.AutoTokenizer.from_pretrained` loads.

    tokenizer = hf_tokenizer.from_sentencepiece(model_proto, [("<|END|>", True), ("<|x_0|>", False)], pad_to=256)
    hf_tokenizer.save(tokenizer, "out/", eos_token="<|END|>")

Text encodes to `SentencePieceProcessor.encode`'s ids (no BOS or EOS): the pipeline follows the model's
normalizer spec in SentencePiece's order, as transformers' `SpmConverter.build_tokenizer_from_spm_proto`
builds it (the NFKC charsmap, then extra-space removal, then "▁" for spaces and the dummy prefix), and BPE merges
are ranked by piece score. The pieces keep their ids; the control pieces (<pad>, <s>, </s>) and <unk> stay
plain vocabulary entries, so a literal "<s>" in the text is spelled out as SentencePiece spells it.

Tokens after the pieces are added tokens, at the ids their order gives: `<|reserved_N|>` (special) fills ids
up to `pad_to`, then `added`. Added tokens are matched in the raw text before it is normalized, and each span
of text between them is encoded on its own (with its own dummy prefix), as `encode` encodes that span.
"""

from collections.abc import Sequence
import itertools
import json
import os

from sentencepiece import sentencepiece_model_pb2

from jaxspeech.convert.mapping import ConversionError

BPE = sentencepiece_model_pb2.TrainerSpec.BPE
PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece


def reserved_token(token_id: int) -> str:
  return f"<|reserved_{token_id}|>"


def read_proto(model_proto: bytes) -> sentencepiece_model_pb2.ModelProto:
  """The parsed model; a ConversionError names each setting the HF pipeline here does not reproduce."""
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  checks = (
      (f"trainer_spec.model_type={proto.trainer_spec.model_type} (only BPE, {BPE}, is converted)",
       proto.trainer_spec.model_type == BPE),
      ("trainer_spec.byte_fallback=True", not proto.trainer_spec.byte_fallback),
      ("trainer_spec.treat_whitespace_as_suffix=True", not proto.trainer_spec.treat_whitespace_as_suffix),
      ("user-defined pieces", not any(p.type == PIECE.USER_DEFINED for p in proto.pieces)),
  )
  problems = [f"{message} is not supported" for message, ok in checks if not ok]
  if problems:
    raise ConversionError("sentencepiece model", problems)
  return proto


def _merges(proto) -> list[tuple[str, str]]:
  """Every (left, right) split of a normal piece into two normal pieces, highest-scoring result first."""
  normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == PIECE.NORMAL}
  ranked = sorted((-score, i, piece[:k], piece[k:]) for piece, (score, i) in normal.items()
                  for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal)
  return [(left, right) for _, _, left, right in ranked]


def from_sentencepiece(model_proto: bytes, added: Sequence[tuple[str, bool]] = (), *, pad_to: int = 0):
  """A `tokenizers.Tokenizer`: the pieces at their ids, reserved tokens up to `pad_to`, then `added`
  ((content, special) pairs) in order; a special token is dropped by `decode(skip_special_tokens=True)`."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, normalizers, pre_tokenizers, Regex  # pylint: disable=import-outside-toplevel
  proto = read_proto(model_proto)
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab=vocab, merges=_merges(proto), unk_token=proto.trainer_spec.unk_piece, fuse_unk=True))
  spec = proto.normalizer_spec
  steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
  if spec.remove_extra_whitespaces:  # spaces only: SentencePiece leaves newlines and tabs to the charsmap
    steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
  if spec.escape_whitespaces:
    steps.append(normalizers.Replace(" ", "▁"))
  if spec.add_dummy_prefix:  # Metaspace adds no prefix to text that starts with "▁"; SentencePiece does
    steps.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
  tokenizer.normalizer = normalizers.Sequence(steps)
  if spec.add_dummy_prefix:
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
  tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " ")] + (
      [decoders.Fuse(), decoders.Strip(content=" ", left=1)] if spec.add_dummy_prefix else []))
  reserved = [(reserved_token(i), True) for i in range(len(vocab), pad_to)]
  # one call per run of equal `special`: each call rebuilds the added-token matcher (65,536 calls take minutes)
  for special, run in itertools.groupby([*reserved, *added], key=lambda t: t[1]):
    tokens = [tokenizers.AddedToken(content, normalized=False, special=special) for content, _ in run]
    (tokenizer.add_special_tokens if special else tokenizer.add_tokens)(tokens)
  return tokenizer


def save(tokenizer, directory: str, *, eos_token: str | None = None, pad_token: str | None = None,
         model_max_length: int = 131_072, tokenizer_class: str = "PreTrainedTokenizerFast") -> list[str]:
  """tokenizer.json, tokenizer_config.json and special_tokens_map.json in `directory`; the names written."""
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  special = {k: v for k, v in (("eos_token", eos_token), ("pad_token", pad_token)) if v is not None}
  config = {"tokenizer_class": tokenizer_class, "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False, **special}
  for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
    with open(os.path.join(directory, name), "w") as f:
      json.dump(content, f, indent=2)
  return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
