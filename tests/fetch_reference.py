"""Fetches the reference implementations the tests compare against: `python tests/fetch_reference.py [CACHE_DIR]`.

torchaudio no longer imports with our torch, but its pure-PyTorch `compliance/kaldi.py` (AST's fbank) does
once a stub `torchaudio` module exists. This extracts that one file from the torchaudio 2.11.0 wheel into
CACHE_DIR/torchaudio/compliance/kaldi.py (default CACHE_DIR: .cache/reference); it does nothing if present.
"""

import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

MEMBER = "torchaudio/compliance/kaldi.py"
SHA256 = "5cbea1a584ddea748f6f68a621d794e13334e88d9faa1d40986f7af32f196d29"  # of MEMBER in torchaudio 2.11.0


def fetch(cache_dir: pathlib.Path) -> pathlib.Path:
  target = cache_dir / MEMBER
  if target.exists():
    return target
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--dest", tmp,
                    "torchaudio==2.11.0"], check=True)
    (wheel,) = pathlib.Path(tmp).glob("torchaudio-2.11.0-*.whl")
    source = zipfile.ZipFile(wheel).read(MEMBER)
  if hashlib.sha256(source).hexdigest() != SHA256:
    raise RuntimeError(f"{MEMBER} from {wheel.name} does not have the expected sha256 {SHA256}")
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_suffix(".partial")
  partial.write_bytes(source)
  partial.rename(target)
  return target


if __name__ == "__main__":
  print(fetch(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/reference")))
