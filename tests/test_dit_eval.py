"""`jaxspeech dit eval`: prompts from the same speaker, and the vocoder bound (Griffin-Lim on the truth's mel)."""

import json

import numpy as np

from jaxspeech import cli
from jaxspeech.dit import evaluate


def test_prompt_is_another_clip_of_the_same_speaker():
  split = [{"index": i, "speaker": s} for i, s in enumerate(["a", "b", "a", "c", "a"])]
  assert [evaluate.prompt_for(u, split)["index"] for u in split] == [2, 1, 4, 3, 0]


def test_vocoder_only_scores_each_recording(corpus_path, tmp_path, capsys):
  out = tmp_path / "eval.json"
  code = cli.main(["dit", "eval", "--vocoder-only", "--data-dir", corpus_path, "--split", "test_unseen",
                   "--limit", "2", "--out", str(out), "--wav-dir", str(tmp_path / "wavs")])
  assert code == 0, capsys.readouterr().err
  result = json.loads(out.read_text())
  rows = result["utterances"]
  assert len(rows) == 2 and len(list((tmp_path / "wavs").iterdir())) == 2
  # Griffin-Lim keeps the length to a frame (256 samples at 24 kHz)
  assert all(abs(r["seconds"] - r["truth_seconds"]) <= 256 / 24000 for r in rows)
  assert all(np.isfinite(r["mcd_dtw"]) and r["mcd_dtw"] > 0 for r in rows)
  assert result["means"]["mcd_dtw"] == np.mean([r["mcd_dtw"] for r in rows])
  assert "mean" in capsys.readouterr().out
