"""CONFIG: the library's settings (`CONFIG.APP.DEBUG`, the remote API key)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class AppConfig:
    """Behaviour of traces on this machine."""

    DEBUG: bool = True  # errors in intervention code show the source line and graph node
    # "local": every trace and generate() takes the whole remote path in this process (as
    # `remote="local"` does), so that a test run proves everything serializes; set from the
    # environment variable NNSIGHT_GRAPH_FORCE_REMOTE
    FORCE_REMOTE: str | None = field(
        default_factory=lambda: os.environ.get("NNSIGHT_GRAPH_FORCE_REMOTE") or None
    )


@dataclass
class ApiConfig:
    """Where remote traces go."""

    HOST: str = "http://127.0.0.1:8000"
    APIKEY: str | None = None


@dataclass
class Config:
    """The settings object exported as `nnsight_graph.CONFIG`."""

    APP: AppConfig = field(default_factory=AppConfig)
    API: ApiConfig = field(default_factory=ApiConfig)

    def set_default_api_key(self, key: str) -> None:
        """Use `key` for remote traces from now on."""
        self.API.APIKEY = key


CONFIG = Config()
