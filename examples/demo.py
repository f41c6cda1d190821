"""The demo: the nnsight walkthrough, as far as nnsight_graph implements it, end to end.

Sections 1-4 run on the walkthrough's two-layer net, section 5 on the GPT-2 that ships with
the package. Run from the repository root: `python examples/demo.py`.
"""

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("walkthrough_basics.py", "walkthrough_generation.py"):
    runpy.run_path(str(HERE / script), run_name="__main__")
