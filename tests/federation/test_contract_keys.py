"""The contract module is the one place that names a message key: no other module of the library
or the apps spells a FedEcho-specific config or metric key as a string literal."""

from __future__ import annotations

import ast
from pathlib import Path

from fedecho.federation.contract import ConfigKey, MetricKey

ROOT = Path(__file__).resolve().parents[2]
# keys that only FedEcho's messages use (generic words like "split", "lr" or "seed" also name data
# labels and options, so they are left out of this scan)
KEYS = {v for cls in (ConfigKey, MetricKey) for k, v in vars(cls).items()
        if k.isupper() and isinstance(v, str) and "-" in v}
# the SuperNode's node config is another namespace that happens to use the same word
NODE_CONFIG = {("fedecho/deploy/supernode.py", "site-index"), ("fedecho/deploy/gate.py", "site-index")}


def test_no_module_outside_the_contract_spells_a_message_key():
    assert {"site-index", "num-examples", "server-round", "budget-spent", "epsilon-example"} <= KEYS
    found = []
    for folder in ("fedecho", "client", "server"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "fedecho/federation/contract.py":
                continue
            tree = ast.parse(path.read_text(), filename=rel)
            docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                          if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                          and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in KEYS
                        and id(node) not in docstrings and (rel, node.value) not in NODE_CONFIG):
                    found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, "use fedecho.federation.contract instead of: " + ", ".join(found)
