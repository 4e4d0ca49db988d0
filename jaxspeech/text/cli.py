"""`jaxspeech text train`: a sentencepiece BPE model from a dataset's transcripts."""

from jaxspeech.data import tfds_io
from jaxspeech.text import spm


def _train(args) -> None:
  source = tfds_io.data_source(args.dataset, args.split)
  texts = (source[i]["text"].decode() for i in range(len(source)))
  tokenizer = spm.train_bpe(texts, vocab_size=args.vocab_size)
  tokenizer.save(args.output)
  print(f"wrote {args.output}: {tokenizer.vocab_size} pieces from {len(source)} transcripts")


def add_parser(groups) -> None:
  text = groups.add_parser("text", help="tokenizers").add_subparsers(dest="command", required=True)
  p = text.add_parser("train", help="train a sentencepiece BPE model on a dataset's transcripts")
  p.add_argument("--dataset", required=True, help="a dataset directory (NAME/VERSION)")
  p.add_argument("--split", default="train")
  p.add_argument("--output", required=True)
  p.add_argument("--vocab-size", type=int, default=1024)
  p.set_defaults(run=_train)
