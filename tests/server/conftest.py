"""A real server on loopback for the remote tests: `nnsight-graph serve` in a subprocess on a
free port, hosting the tiny GPT-2 and the walkthrough net, with two users' keys, started once
for the module and stopped in teardown."""

from collections.abc import Iterator

import pytest
from serving import KEYS, keys_file

import nnsight_graph as nnsight
from nnsight_graph.models import tiny_gpt2_path
from nnsight_graph.server.launch import local_server

NET_FACTORY = "nnsight_graph.models.walkthrough:walkthrough_net"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("server")
    hosted = ["--model", "tiny-gpt2=tiny-gpt2", "--model", f"net={NET_FACTORY}"]
    with local_server(*hosted, "--api-keys", str(keys_file(folder)),
                      store=str(folder / "store")) as url:
        yield url


@pytest.fixture
def alice(monkeypatch: pytest.MonkeyPatch, server: str) -> str:
    """Requests go to the test server with alice's key; the server's URL."""
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", KEYS["alice"])
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", server)
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)
    return server


@pytest.fixture(scope="module")
def tiny() -> nnsight.LanguageModel:
    """The shipped GPT-2 with its weights, for local runs to compare with."""
    return nnsight.LanguageModel(tiny_gpt2_path(), dispatch=True)
