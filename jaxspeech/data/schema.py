"""The one example schema every speech dataset in jaxspeech uses (corpus and user corpora)."""

import numpy as np
import tensorflow_datasets as tfds

SPEECH_FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),          # unique within the dataset, e.g. "spk03-000017" or the source file stem
    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES),
    # ^ mono PCM at `sample_rate`; BYTES stores raw little-endian samples instead of int64 varints.
    "sample_rate": np.int32,             # Hz
    "text": tfds.features.Text(),        # transcript, UTF-8
    "speaker": tfds.features.Text(),     # speaker name
    "speaker_id": np.int32,              # dense index into the dataset's speaker list
    "language": tfds.features.Text(),    # BCP-47-ish tag, e.g. "en-us"
})
