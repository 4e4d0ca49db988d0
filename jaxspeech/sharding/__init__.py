"""Device meshes from config and MaxText-style logical axis rules."""

from jaxspeech.sharding.mesh import MESH_AXES, make_mesh
from jaxspeech.sharding.rules import constrain, logical_spec, param_shardings, platform, shards, use_rules

__all__ = ["MESH_AXES", "make_mesh", "constrain", "logical_spec", "param_shardings", "platform", "shards", "use_rules"]
