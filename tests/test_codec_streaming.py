"""Streaming decode (jaxspeech/codec/streaming.py) against whole-utterance decoding, on a small random-init codec."""

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from flax import nnx

from jaxspeech import cli
from jaxspeech.codec import streaming
from jaxspeech.codec.model import Codec
from tests.test_codec_tokenize import codec_workdir, small_codec_config  # noqa: F401  (the fixture)

N = 23   # codes: chunks of 5 leave a short last one


@pytest.fixture(scope="module")
def codec():
  return Codec(small_codec_config(), rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def codes():
  return np.random.default_rng(0).integers(0, 4 ** 8, N)


@pytest.fixture(scope="module")
def whole(codec, codes):
  return np.asarray(codec.decode(jnp.asarray(codes)[None]))[0]


def test_context_covering_the_utterance_gives_whole_decoding(codec, codes, whole):
  pieces = streaming.decode(codec, codes, chunk=5, left=N, lookahead=N)
  assert [len(p) for p in pieces] == [5 * codec.hop] * 4 + [3 * codec.hop]
  np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)


def test_chunks_come_out_once_their_lookahead_has_arrived(codec, codes):
  streamer = streaming.Streamer(codec, chunk=5, left=10, lookahead=2)
  ready = [[len(p) // codec.hop for p in streamer.push(c)] for c in codes]
  assert [i for i, n in enumerate(ready) if n] == [6, 11, 16, 21] and all(n in ([], [5]) for n in ready)
  assert [len(p) for p in streamer.flush()] == [3 * codec.hop]
  assert not streamer.flush()


def test_how_codes_are_pushed_does_not_change_the_audio(codec, codes):
  one_by_one = np.concatenate(streaming.decode(codec, codes, chunk=5, left=4, lookahead=1))
  streamer = streaming.Streamer(codec, chunk=5, left=4, lookahead=1)
  grouped = np.concatenate([*streamer.push(codes[:9]), *streamer.push(codes[9:20]), *streamer.push(codes[20:]),
                            *streamer.flush()])
  np.testing.assert_array_equal(grouped, one_by_one)


def test_more_context_comes_closer_to_whole_decoding(codec, codes, whole):
  def gap(left, lookahead):
    return float(np.abs(np.concatenate(streaming.decode(codec, codes, chunk=5, left=left, lookahead=lookahead))
                        - whole).mean())
  none, some, all_left = gap(0, 0), gap(10, 2), gap(N, 2)
  assert none > some > all_left > 0, (none, some, all_left)


def test_bad_settings_are_refused(codec):
  with pytest.raises(ValueError, match="chunk ≥ 1"):
    streaming.Streamer(codec, chunk=0)


def test_codec_decode_stream_writes_the_streamed_audio(codec_workdir, codes, tmp_path, capsys):  # noqa: F811
  np.save(tmp_path / "codes.npy", codes)
  out = tmp_path / "out.wav"
  assert cli.main(["codec", "decode", "--workdir", codec_workdir, "--codes", str(tmp_path / "codes.npy"), "--out",
                   str(out), "--stream", "--chunk", "5", "--left", "10", "--lookahead", "2"]) == 0
  assert "first audio after" in capsys.readouterr().out
  wav, rate = soundfile.read(out, dtype="float32")
  codec = Codec(small_codec_config(), rngs=nnx.Rngs(3))
  expected = np.concatenate(streaming.decode(codec, codes, chunk=5, left=10, lookahead=2))
  assert rate == 16000
  np.testing.assert_allclose(wav, np.clip(expected, -1, 1), atol=1 / 32768)
