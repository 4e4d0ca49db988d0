"""Import-time stand-ins for modules the PyTorch reference packages import but this machine lacks.

torchaudio does not load beside torch 2.13 here; f5-tts, xcodec2, torchtune and vocos import it (and
a few packages not installed) at module level without using them in the model code the parity tests
run. The stand-in raises if anything in it
is actually called, so a test can never silently compare against a stub. Only tests use this.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types


class _Missing:
  def __init__(self, name):
    self._name = name

  def __getattr__(self, attr):
    return _Missing(f"{self._name}.{attr}")

  def __call__(self, *args, **kwargs):
    raise RuntimeError(f"{self._name} is a test stub: torchaudio is not importable on this machine")

  def __mro_entries__(self, bases):
    return (object,)


class _StubModule(types.ModuleType):
  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return _Missing(f"{self.__name__}.{attr}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Answers imports of the stubbed roots and anything beneath them."""

  def __init__(self):
    self.roots: set[str] = set()

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in self.roots:
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _StubModule(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    pass


_FINDER = _StubFinder()


def stub_modules(*roots: str) -> None:
  """Stand-ins for top-level packages `roots` (and every submodule) unless they really import."""
  for root in roots:
    try:
      importlib.import_module(root)
      continue
    except Exception:  # noqa: BLE001 - any import failure means the real module is unusable here
      sys.modules.pop(root, None)
    _FINDER.roots.add(root)
  if _FINDER not in sys.meta_path:
    sys.meta_path.insert(0, _FINDER)


def stub_references() -> None:
  """What f5-tts, xcodec2, torchtune and vocos import at module level but never use in their models."""
  stub_modules("torchaudio", "rjieba", "pypinyin", "wandb", "datasets")
