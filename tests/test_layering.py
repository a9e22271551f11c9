"""The module boundaries of docs/DESIGN.md, checked on the source: sipcore imports neither legacy/
nor refactored/ (the assembly module wires them in), the proxy core does no I/O of its own, and
stage differences come from the stage table instead of stage-number comparisons."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(package):
    for base, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(base, name)


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_sipcore_never_imports_the_stage_plugins():
    bad = [(os.path.relpath(p, ROOT), m) for p in _modules("sipcore") for m in _imports(p)
           if m.split(".")[0] in ("legacy", "refactored", "assembly", "harness", "netlab")]
    assert bad == []


def test_the_proxy_core_and_its_collaborators_do_no_io():
    sans_io = ["proxy_core.py", "call.py", "media_session.py", "originated.py", "registration.py",
               "transaction.py", "offer_answer.py", "stages.py"]
    bad = [(name, m) for name in sans_io for m in _imports(os.path.join(ROOT, "sipcore", name))
           if m.split(".")[0] in ("asyncio", "socket", "time", "sipcore.proxy_driver", "sipcore.server")
           or m in ("sipcore.proxy_driver", "sipcore.server", "sipcore.transaction_runner")]
    assert bad == []


def test_no_stage_number_comparisons_outside_the_table():
    pattern = re.compile(r"\bstage\s*(==|!=|>=|<=|<|>)\s*\d|\bstage\s+in\s*[\(\[{]\s*\d")
    hits = []
    for package in ("sipcore", "legacy", "refactored", "assembly", "harness", "netlab"):
        for path in _modules(package):
            for no, line in enumerate(open(path, encoding="utf-8"), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code):
                    hits.append(f"{os.path.relpath(path, ROOT)}:{no}: {line.strip()}")
    assert hits == []
