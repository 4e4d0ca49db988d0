"""Offline speech synthesis through the libespeak-ng shipped in the `espeakng-loader` wheel.

espeak-ng keeps one global synthesiser per process, so this module owns it: call `synthesize`
from one thread. Output is mono int16 at `SAMPLE_RATE` Hz, deterministic for a given input.
"""

import ctypes
import functools
import threading

import espeakng_loader
import numpy as np

SAMPLE_RATE = 22_050

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()
_chunks: list[np.ndarray] = []


@_CALLBACK
def _collect(wav, num_samples, events):
  del events
  if num_samples > 0:
    _chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
  return 0  # 0 = continue synthesis


@functools.cache
def _lib() -> ctypes.CDLL:
  lib = ctypes.CDLL(espeakng_loader.get_library_path())
  lib.espeak_Initialize.restype = ctypes.c_int
  lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
  lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
  lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
  lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                               ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
  rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
  if rate != SAMPLE_RATE:
    raise RuntimeError(f"libespeak-ng at {espeakng_loader.get_library_path()} initialised at {rate} Hz, "
                       f"expected {SAMPLE_RATE} Hz")
  lib.espeak_SetSynthCallback(_collect)
  return lib


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> np.ndarray:
  """Speaks `text` with an espeak-ng voice name (e.g. "en-us+f3"); rate in words/min, pitch 0-100."""
  lib = _lib()
  with _lock:
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
      raise ValueError(f"espeak-ng has no voice {voice!r}")
    for name, value in (("rate", rate), ("pitch", pitch), ("range", pitch_range), ("volume", 100)):
      lib.espeak_SetParameter(_PARAM[name], value, 0)
    _chunks.clear()
    data = text.encode("utf-8") + b"\0"
    err = lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
    if err != 0:
      raise RuntimeError(f"espeak_Synth failed with code {err} on {text!r}")
    lib.espeak_Synchronize()
    wav = np.concatenate(_chunks) if _chunks else np.zeros((0,), np.int16)
    _chunks.clear()
  return wav.astype(np.int16)
