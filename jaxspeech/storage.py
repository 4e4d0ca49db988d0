"""Where a workdir lives: a local directory, or a Google Cloud Storage prefix (`gs://bucket/run`).

Small files (config.json, metrics.jsonl, the lock) go through `etils.epath` (gcsfs for gs://); arrays go
through Orbax's tensorstore, which writes gs:// itself. The endpoints come from the clients' own settings
(`STORAGE_EMULATOR_HOST` for gcsfs and google-cloud-storage, `TENSORSTORE_GCS_HTTP_URL` for tensorstore), so a
local emulator stands in for GCS unchanged (tests/test_storage.py). Workdirs use it through
`jaxspeech.workdir`; dataset paths are checked with `local_only`.

s3:// is refused with one line: Orbax cannot write checkpoints there (it builds tensorstore specs for gs://
and local paths only; google/orbax#2739). Mount the bucket (Mountpoint for Amazon S3) and pass the mount's
path. Datasets are read by ArrayRecord, which opens local files only: a dataset in a bucket is read through a
mount (gcsfuse, Mountpoint for Amazon S3), as MaxText's Grain pipeline does.
"""

import os

from etils import epath
import fsspec

SCHEMES = ("gs",)
# gcsfs caches directory listings per process, so another process's checkpoint (or lease) would stay unseen
fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False
MOUNT_HINT = {"gs": "gcsfuse", "s3": "Mountpoint for Amazon S3 (mount-s3)"}


class StorageError(ValueError):
  """A path on storage jaxspeech cannot use for this purpose."""


def scheme(path: str) -> str:
  """"gs", "s3", ... for a URL; "" for a local path."""
  head, sep, _ = os.fspath(path).partition("://")
  return head if sep else ""


def is_remote(path: str) -> bool:
  return bool(scheme(path))


def resolve(path: str) -> str:
  """A workdir path as it is used everywhere: absolute if local (Orbax reads no metadata through a relative
  path), unchanged on gs://; StorageError on a scheme Orbax cannot write."""
  path = os.fspath(path)
  kind = scheme(path)
  if not kind:
    return os.path.abspath(path)
  if kind not in SCHEMES:
    raise StorageError(f"workdir {path}: Orbax cannot write {kind}:// checkpoints (google/orbax#2739); mount the "
                       f"bucket with {MOUNT_HINT.get(kind, 'a FUSE mount')} and pass the mount's path, or use gs://")
  return path.rstrip("/")


def local_only(path: str, what: str) -> None:
  """StorageError for a bucket URL where only a local (or mounted) path can be read."""
  kind = scheme(path)
  if kind:
    raise StorageError(f"{what} {path}: ArrayRecord reads local files only; mount the bucket with "
                       f"{MOUNT_HINT.get(kind, 'a FUSE mount')} and pass the mount's path")


def join(path: str, *names: str) -> str:
  return str(epath.Path(path).joinpath(*names)) if is_remote(path) else os.path.join(path, *names)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def isdir(path: str) -> bool:
  return epath.Path(path).is_dir()


def listdir(path: str) -> list[str]:
  directory = epath.Path(path)
  return [p.name for p in directory.iterdir()] if directory.is_dir() else []


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def read_bytes(path: str) -> bytes:
  return epath.Path(path).read_bytes()


def write_text(path: str, text: str) -> None:
  """Whole or not at all: a local file through a renamed temporary, an object by its one upload."""
  if is_remote(path):
    epath.Path(path).write_text(text)
    return
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_bytes(path: str, data: bytes) -> None:
  epath.Path(path).write_bytes(data)


def remove(path: str) -> None:
  """Deletes a file or a directory tree; nothing if it is not there."""
  target = epath.Path(path)
  if target.is_dir():
    target.rmtree()
  elif target.exists():
    target.unlink()


def move(src: str, dst: str) -> None:
  """Moves a file or a directory tree (on a bucket: copied, then deleted)."""
  remove(dst)
  if is_remote(src):
    source = epath.Path(src)
    for item in source.rglob("*"):
      if not item.is_dir():
        target = epath.Path(dst) / item.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.read_bytes())
    source.rmtree()
  else:
    epath.Path(src).rename(dst)
