"""`jaxspeech codec encode|decode|eval` on a few corpus utterances, with a small random-init codec workdir."""

import dataclasses
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import soundfile
from flax import nnx

from jaxspeech import cli
from jaxspeech.codec import family, inference, sizes, tokenize
from jaxspeech.gan import losses
from jaxspeech.codec.model import Codec, CodecConfig
from jaxspeech.convert import mapping, workdir as workdir_lib
from jaxspeech.data import schema, tfds_io
from jaxspeech.workdir import Workdir
from tests.helpers import replaced


def small_codec_config() -> CodecConfig:
  return replaced(sizes.tiny(), **{"encoder.dilations": (1,), "decoder.depth": 1})


@pytest.fixture(scope="module")
def codec_workdir(tmp_path_factory) -> str:
  """A codec workdir as `jaxspeech convert` writes one: these params at step 0."""
  cfg = small_codec_config()
  params = mapping.flatten(nnx.to_pure_dict(nnx.state(Codec(cfg, rngs=nnx.Rngs(3)), nnx.Param)))
  dst = str(tmp_path_factory.mktemp("codec") / "workdir")
  workdir_lib.write(dst, "codec", workdir_lib.Imported(model=dataclasses.asdict(cfg), params=params), {"source": "test"})
  return dst


@pytest.fixture(scope="module")
def small_corpus(corpus_path, tmp_path_factory) -> str:
  """Five utterances of the corpus: train 3, validation 2."""
  examples = {split: [tfds_io.data_source(corpus_path, split)[i] for i in range(n)]
              for split, n in (("train", 3), ("validation", 2))}
  decoded = {split: [{k: v.decode() if isinstance(v, bytes) else v for k, v in r.items()} for r in records]
             for split, records in examples.items()}
  return tfds_io.write_dataset(str(tmp_path_factory.mktemp("corpus") / "small" / "1.0.0"), schema.SPEECH_FEATURES,
                               decoded, metadata=tfds_io.metadata(corpus_path))


def test_restore_gives_the_saved_codec(codec_workdir):
  codec, model_cfg = Workdir(codec_workdir).load_model(family.FAMILY)
  expected = Codec(small_codec_config(), rngs=nnx.Rngs(3))
  assert family.model_config(model_cfg) == small_codec_config()
  wav = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (1, 1600)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(codec.encode(wav)), np.asarray(expected.encode(wav)))


def test_converted_workdir_holds_the_codec_for_train_init_from(codec_workdir):
  """No discriminators (X-codec2's release has none): `train.init_from` starts GAN training from the codec's
  params, which must be a subset of the GAN model's in the same shapes; the discriminators keep their init."""
  params = Workdir(codec_workdir).read_params("codec").params
  assert params and not any(losses.is_discriminator(tuple(k.split("."))) for k in params)
  cfg = ml_collections.ConfigDict({"model": dataclasses.asdict(small_codec_config()), "gan": losses.defaults()})
  gan = mapping.param_shapes(nnx.state(nnx.eval_shape(lambda: family.build_model(cfg, nnx.Rngs(0))), nnx.Param))
  assert {k: tuple(v.shape) for k, v in params.items()} == {k: v for k, v in gan.items() if k in params}
  assert all(losses.is_discriminator(tuple(k.split("."))) for k in gan.keys() - params.keys())


@pytest.mark.slow
def test_encode_writes_codes_with_metadata_and_skips_finished_chunks(codec_workdir, small_corpus, tmp_path):
  out = str(tmp_path / "codes" / "1.0.0")
  parts = out + ".parts"
  # A chunk finished by an earlier (killed) run is kept as it is, not encoded again. Its codes span the codebook:
  # the dataset must keep those past int16's 32,767 exactly.
  saved = np.array([0, 32_767, 32_768, 40_000, 65_534, 65_535, 7], np.int32)
  os.makedirs(parts)
  np.savez(os.path.join(parts, "train-00000.npz"), codes=saved, counts=np.array([3, 4]),
           durations=np.array([0.06, 0.08], np.float32))
  assert cli.main(["codec", "encode", "--workdir", codec_workdir, "--data-dir", small_corpus, "--out", out,
                   "--chunk", "2", "--per-device", "1"]) == 0
  assert not os.path.exists(parts)
  codec, _ = Workdir(codec_workdir).load_model(family.FAMILY)
  for split, n in (("train", 3), ("validation", 2)):
    source, codes = tfds_io.data_source(small_corpus, split), tfds_io.data_source(out, split)
    assert len(codes) == n
    for i in range(n):
      record, row = source[i], codes[i]
      for key in tokenize.KEPT:
        assert row[key] == record[key]
      if split == "train" and i < 2:   # the pre-existing chunk
        assert row["codes"].dtype == np.int32
        np.testing.assert_array_equal(row["codes"], saved[:3] if i == 0 else saved[3:])
        continue
      wav = inference.decode_audio(record, 16000)
      assert row["duration"] == pytest.approx(len(wav) / 16000)
      alone = np.asarray(codec.encode(jnp.asarray(wav)[None]))[0]
      assert row["codes"].shape == (-(-len(wav) // 320),) == alone.shape
      # Batched encoding pads to whole seconds: codes further than the encoder's receptive field (< 8 codes)
      # from the end are the same.
      np.testing.assert_array_equal(row["codes"][:-8], alone[:-8])
  assert tfds_io.metadata(out)["codes_per_second"] == 50


def test_decode_writes_the_codec_output(codec_workdir, tmp_path):
  codes = np.random.default_rng(1).integers(0, 4 ** 8, 10)
  (tmp_path / "codes.txt").write_text(" ".join(map(str, codes)))
  out = str(tmp_path / "out.wav")
  assert cli.main(["codec", "decode", "--workdir", codec_workdir, "--codes", str(tmp_path / "codes.txt"),
                   "--out", out]) == 0
  wav, rate = soundfile.read(out, dtype="float32")
  codec, _ = Workdir(codec_workdir).load_model(family.FAMILY)
  expected = np.clip(np.asarray(codec.decode(jnp.asarray(codes)[None]))[0], -1, 1)
  assert rate == 16000 and wav.shape == (10 * 320,)
  np.testing.assert_allclose(wav, expected, atol=1 / 32768)   # 16-bit PCM


def test_decode_rejects_codes_outside_the_codebook(codec_workdir, tmp_path, capsys):
  (tmp_path / "codes.txt").write_text("1 2 65536")
  assert cli.main(["codec", "decode", "--workdir", codec_workdir, "--codes", str(tmp_path / "codes.txt"),
                   "--out", str(tmp_path / "out.wav")]) == 2
  assert "[0, 65536)" in capsys.readouterr().err


def test_eval_reports_every_metric(codec_workdir, small_corpus, capsys):
  assert cli.main(["codec", "eval", "--workdir", codec_workdir, "--data-dir", small_corpus,
                   "--per-device", "1"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["utterances"] == 2
  assert result["mel_distance"] > 0 and 0 <= result["stoi"] <= 1 and -1 <= result["pesq"] <= 4.7
  assert 0 < result["codebook_usage"] <= 1 and 1 <= result["codebook_perplexity"] <= 4 ** 8


@pytest.mark.slow
def test_encode_shows_progress_and_ends_with_a_summary(codec_workdir, small_corpus, tmp_path, capsys):
  out = str(tmp_path / "codes" / "1.0.0")
  os.makedirs(out + ".parts")  # validation's first utterance was encoded by an earlier, killed run
  np.savez(os.path.join(out + ".parts", "validation-00000.npz"), codes=np.arange(5, dtype=np.int32),
           counts=np.array([5]), durations=np.array([0.1], np.float32))
  assert cli.main(["codec", "encode", "--workdir", codec_workdir, "--data-dir", small_corpus, "--out", out,
                   "--splits", "validation", "--chunk", "1", "--per-device", "1"]) == 0
  captured = capsys.readouterr()
  bar = captured.err.replace("\r", "\n")
  assert " 1/2 " in bar and " 2/2 " in bar and "utt/s" in bar, captured.err  # resumed at 1, then done
  second = tfds_io.data_source(out, "validation")[1]
  summary = [line for line in captured.out.splitlines() if line.startswith("codec encode:")]
  assert summary == [f"codec encode: 1 utterances, {second['duration']:.1f} s of audio, {len(second['codes'])} codes "
                     f"written in {summary[0].split(' written in ')[1].split(' s ')[0]} s "
                     "(1 utterances already encoded by an earlier run)"], captured.out
