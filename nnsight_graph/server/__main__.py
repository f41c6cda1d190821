"""`python -m nnsight_graph.server serve ...`: the same as `nnsight-graph serve ...`."""

from .cli import main

if __name__ == "__main__":
    main()
