"""Policy files: ``[device]`` + ``[[policy]]`` TOML, validated with every error located.

Imports nothing from kernel, devices, service or the daemon (a test enforces it).
"""

from hidbpfd.config.errors import ConfigError, ConfigErrors
from hidbpfd.config.load import DEFAULT_DIR, Config, PolicyFile, ProgramRef, load
from hidbpfd.config.match import DeviceMatch

__all__ = [
    "DEFAULT_DIR",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "DeviceMatch",
    "PolicyFile",
    "ProgramRef",
    "load",
]
