"""A recorded graph as data: print it, draw it, store it, load it back and run it again.

Records the walkthrough's "reference values from earlier invokes" cell (section 4) on its
two-layer net: invoke 0 saves layer1's output, invoke 1 zeroes layer1's output with it and saves
the model's output, invoke 2 saves the unchanged output. Writes `graph.dot`, `graph.png` (when
Graphviz is installed) and `graph.nng` into --out, then re-runs the loaded graph.

Run from the repository root: `python examples/graph_tools.py [--out DIR]` (default ./out).
"""

import argparse
from collections import OrderedDict
from pathlib import Path

import torch

from nnsight_graph import NNsight
from nnsight_graph.ir import Graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the files")
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        OrderedDict(
            [
                ("layer1", torch.nn.Linear(5, 10)),
                ("layer2", torch.nn.Linear(10, 2)),
            ]
        )
    ).requires_grad_(False)
    model = NNsight(net)
    input = torch.rand((1, 5))

    with model.trace() as tracer:
        with tracer.invoke(input):
            layer1_out = model.layer1.output.save()

        with tracer.invoke(input):
            model.layer1.output[:] = layer1_out * 0  # zero it out
            modified_out = model.output.save()

        with tracer.invoke(input):
            original_out = model.output.save()

    print("Original output:", original_out)
    print("Modified output:", modified_out)

    graph = tracer.graph
    assert graph is not None
    print(f"\nThe recorded graph ({len(graph)} nodes, {len(graph.invokes)} invokes):")
    print(graph)

    (out / "graph.dot").write_text(graph.to_dot())
    try:
        image = graph.render(out / "graph.png")
        print(f"\nDrew {image}")
    except FileNotFoundError as error:  # Graphviz is not installed: say how to get it
        print(f"\nNo image: {error}")
    print(f"Wrote {out / 'graph.dot'}")

    path = graph.save(out / "graph.nng")
    print(f"Saved {path} ({path.stat().st_size} bytes)")

    loaded = Graph.load(path)
    assert str(loaded) == str(graph)
    results = model.run(loaded)  # {id of the saved node: value}
    # The trace's own values, by the node each .save() saved (the saves are in program order).
    names = ["layer1_out", "modified_out", "original_out"]
    traced = dict(zip(names, (layer1_out, modified_out, original_out), strict=True))
    saved_ids = [node.args[0].id for node in loaded.nodes if node.op == "save"]
    print(f"\nLoaded it back and ran it again: {len(results)} saved values")
    same = sorted(results) == sorted(saved_ids)
    for name, id in zip(names, saved_ids, strict=True):
        match = id in results and torch.equal(results[id], traced[name])
        same = same and match
        print(f"  %{id} {name}: {'matches' if match else 'DIFFERS'} the trace")
    print("The results match." if same else "The results DIFFER.")
    if not same:
        raise SystemExit(1)

    # A loaded graph is untrusted: it runs only what the registry (ir/registry.py) allows.
    # A copy whose first operation was changed to call os.system is refused before anything
    # of it runs, and nothing named by the payload is imported.
    from nnsight_graph.ir import Op
    from nnsight_graph.ir.registry import RegistryError

    nodes = list(loaded.nodes)
    index = next(i for i, node in enumerate(nodes) if node.op is Op.CALL)
    nodes[index] = nodes[index]._replace(target="os.system", args=("touch pwned",))
    tampered = loaded.with_nodes(nodes)
    tampered.save(out / "tampered.nng")
    try:
        model.run(Graph.load(out / "tampered.nng"))
    except RegistryError as error:
        print(f"\nA tampered copy is refused: {str(error).splitlines()[0][:100]}...")
    else:
        raise SystemExit("the tampered graph ran")


if __name__ == "__main__":
    main()
