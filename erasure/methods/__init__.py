"""Erasure methods: one interface (``ErasureMethod``), configs (``MethodConfig``), a registry.

Methods are registered lazily by name, so choosing one imports only its module.
"""

from .base import ErasureMethod, MethodConfig, read_config_file
from .registry import available_methods, get_method, register, register_lazy

register_lazy("advunlearn", "erasure.methods.advunlearn:AdvUnlearn")
register_lazy("doco", "erasure.methods.doco:DoCo")
register_lazy("esd", "erasure.methods.esd:ESD")
register_lazy("prune", "erasure.methods.prune:Prune")
register_lazy("sfd", "erasure.methods.sfd:SFD")

__all__ = [
    "ErasureMethod",
    "MethodConfig",
    "available_methods",
    "get_method",
    "read_config_file",
    "register",
    "register_lazy",
]
