"""The demo: the nnsight walkthrough, as far as nnsight_graph implements it, end to end.

Sections 1-4 run on the walkthrough's two-layer net, sections 5-8 on the GPT-2 that ships
with the package, section 9 against an nnsight_graph server the demo starts on loopback. Run
from the repository root: `python examples/demo.py`. Then coming_from_nnsight.py: everyday
nnsight 0.8.1 code beyond the walkthrough (module methods, context managers, aliases, caches,
the streamer, skips per invoke, gradients, threads), and shared_server.py: two users' keys,
a budget, co-batched jobs and metrics on one server.
"""

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCRIPTS = (
    "walkthrough_basics.py",
    "walkthrough_generation.py",
    "walkthrough_advanced.py",
    "coming_from_nnsight.py",  # everyday nnsight 0.8.1 forms beyond the walkthrough
    "shared_server.py",  # a lab's server: keys, budgets, co-batching, metrics
)

for script in SCRIPTS:
    print(f"\n===== {script} =====")
    runpy.run_path(str(HERE / script), run_name="__main__")
