"""CONFIG: the library's settings (`CONFIG.APP.DEBUG`, the remote server and API key)."""

from __future__ import annotations

import os
import re
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
    REMOTE_LOGGING: bool = True  # a status line while a remote job waits and runs
    REMOTE_PRINT: bool = True  # print() in a remote trace prints here as the job runs


@dataclass
class ApiConfig:
    """Where remote traces go."""

    # the server `remote=True` uses (`nnsight-graph serve` listens here by default)
    HOST: str = field(
        default_factory=lambda: os.environ.get("NNSIGHT_GRAPH_HOST") or "http://127.0.0.1:6677"
    )
    APIKEY: str | None = field(default_factory=lambda: os.environ.get("NNSIGHT_GRAPH_API_KEY"))


@dataclass
class Config:
    """The settings object exported as `nnsight_graph.CONFIG`."""

    APP: AppConfig = field(default_factory=AppConfig)
    API: ApiConfig = field(default_factory=ApiConfig)

    def set_default_api_key(self, key: str) -> None:
        """Use `key` for remote traces from now on."""
        self.API.APIKEY = key


CONFIG = Config()


def host_url(host: str | None = None) -> str:
    """A server's base URL: `host`, else `CONFIG.API.HOST`; `host:port` means http."""
    url = (host or CONFIG.API.HOST).rstrip("/")
    return url if re.match(r"^https?://", url) else "http://" + url
