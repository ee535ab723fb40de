"""House rules that keep untrusted files from running code, checked over the whole backend source."""

import ast
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[1] / "backend"
PICKLE_MODULES = ("pickle", "cPickle", "dill", "marshal", "shelve")


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def rule_breaks(source: str, where: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in PICKLE_MODULES for n in names):
                problems.append(f"{where}:{node.lineno} imports a pickle module")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("eval", "exec") and not owner:
            problems.append(f"{where}:{node.lineno} calls {name}")
        if owner == "torch" and name == "load" and not _is_true(keywords.get("weights_only")):
            problems.append(f"{where}:{node.lineno} calls torch.load without weights_only=True")
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
            problems.append(f"{where}:{node.lineno} calls yaml.{name} (use safe_load)")
        if "trust_remote_code" in keywords and not (isinstance(keywords["trust_remote_code"], ast.Constant)
                                                     and keywords["trust_remote_code"].value is False):
            problems.append(f"{where}:{node.lineno} passes trust_remote_code")
    return problems


def test_no_pickle_eval_or_remote_code_in_the_backend():
    problems = []
    for path in sorted(BACKEND.rglob("*.py")):
        problems += rule_breaks(path.read_text(), str(path.relative_to(BACKEND)))
    assert problems == []


def test_the_scan_finds_each_kind_of_rule_break():
    source = (
        "import torch, yaml\nimport pickle\nfrom dill import loads\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\ntorch.load('x', weights_only=True)\n"
        "eval('1')\nyaml.load(s)\nyaml.safe_load(s)\nf(trust_remote_code=True)\ng(trust_remote_code=False)\n"
    )
    problems = rule_breaks(source, "m.py")
    assert [p.split(":")[1].split()[0] for p in problems] == ["2", "3", "4", "5", "7", "8", "10"]
