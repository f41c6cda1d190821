"""A shared server on loopback: two users' keys, a daily budget, co-batching and metrics.

Starts `nnsight-graph serve` with a keys file for alice and bob (bob with 600 run-seconds a
day), queues traces of both without waiting (`blocking=False`), then shows that jobs of
different users ran merged in one forward pass (`batch_jobs`), each with the values of its own
prompt, what `/v1/whoami` tells bob, and a few lines of `/metrics`.
Run from the repository root: `python examples/shared_server.py`.
"""

import tempfile
from pathlib import Path

import httpx

import nnsight_graph as nnsight
from nnsight_graph.models import tiny_gpt2_path
from nnsight_graph.server.app import hash_key
from nnsight_graph.server.launch import local_server

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}
PROMPTS = {"alice": "The Eiffel Tower is in the city of", "bob": "The Colosseum is in the city of"}

llm = nnsight.LanguageModel(str(tiny_gpt2_path()))  # config and tokenizer only: runs are remote

with tempfile.TemporaryDirectory() as folder:
    keys = Path(folder) / "keys.txt"
    keys.write_text(f"alice {hash_key(KEYS['alice'])}\n"
                    f"bob {hash_key(KEYS['bob'])} 600\n")  # USER SHA256 [SECONDS_PER_DAY]
    with local_server("--api-keys", str(keys), "--batch-window-ms", "20") as url:
        jobs = []
        for _ in range(4):
            for user in ("alice", "bob"):
                nnsight.CONFIG.set_default_api_key(KEYS[user])  # whose job this is
                with llm.trace(PROMPTS[user], remote=url, blocking=False) as tracer:
                    llm.lm_head.output[0, -1].argmax().save()
                jobs.append((user, tracer.job))
        for user, job in jobs:
            (token,) = job.result(timeout=60).values()
            shared = job.info()["batch_jobs"]  # None: the job ran alone
            how = f"merged: one forward pass of {shared} jobs" if shared else "ran alone"
            print(f"{user}: {llm.tokenizer.decode(token)!r:10} ({how})")

        bob = httpx.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {KEYS['bob']}"})
        print("bob's /v1/whoami:", bob.json())
        metrics = httpx.get(f"{url}/metrics").text.splitlines()
        for line in metrics:
            if line.startswith(("nnsight_graph_jobs_total", "nnsight_graph_batch_jobs_count")):
                print(line)
