"""Core: model handle, transform registry, backend protocol, artifacts, hardware."""
from .artifact import Artifact
from .backend import Backend, Runner, get_backend, list_backends, register_backend
from .errors import ArtifactError, UserError
from .handle import ModelHandle
from .hardware import HardwareProfile, hardware_profile
from .transform import TransformConfig, compress, config_from_dict, register_transform

__all__ = ["Artifact", "ArtifactError", "Backend", "HardwareProfile", "ModelHandle", "Runner",
           "TransformConfig", "UserError", "compress", "config_from_dict", "get_backend",
           "hardware_profile", "list_backends", "register_backend", "register_transform"]
