"""The demo: the nnsight walkthrough, as far as nnsight_graph implements it, end to end.

Sections 1-4 run on the walkthrough's two-layer net, sections 5-9 on the GPT-2 that ships
with the package (section 9's remote cells run locally: there is no server yet). Run from the
repository root: `python examples/demo.py`.
"""

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("walkthrough_basics.py", "walkthrough_generation.py", "walkthrough_advanced.py"):
    runpy.run_path(str(HERE / script), run_name="__main__")
