"""Shared layers. Params carry logical axis names that `jaxspeech.sharding` resolves against a mesh
later, so flax's eager sharding (which needs a mesh when a param is created) is turned off."""

from flax import nnx

nnx.use_eager_sharding(False)
