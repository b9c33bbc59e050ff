"""Frame policies as types (featcache/spec/frame_policy.py, policy.py, clip_policy.py): each
built-in kind's capabilities, its string form read back, and the rule that no module outside the
policy modules dispatches on a policy's kind or on a policy string's prefix."""
from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest

from featcache.spec.frame_policy import policy_classes
from featcache.spec.policy import (
    ClipsPolicy,
    FpsPolicy,
    FramePolicy,
    KeyFramePolicy,
    StridePolicy,
    UniformPolicy,
    WindowsPolicy,
    default_view,
    parse_policy,
    scores_needed,
    short_below,
)
from featcache.video.select import policy_indices, selection

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "featcache"
# the modules that may know a policy's kind: the vocabulary and the selection registries
POLICY_MODULES = {"spec/frame_policy.py", "spec/policy.py", "spec/clip_policy.py", "video/select.py", "video/clips.py"}

# text -> (class, unit, needs_scores, fixed_length, served_from, length of a 10-frame video)
BUILT_IN = {
    "uniform:4": (UniformPolicy, "frame", False, 4, "frames", 4),
    "keyframes:3": (KeyFramePolicy, "frame", True, 3, "frames", 3),
    "stride:3": (StridePolicy, "frame", False, None, "itself", 4),  # frames 0, 3, 6, 9
    "fps:2": (FpsPolicy, "frame", False, None, "itself", None),
    "clips:5": (ClipsPolicy, "clip", False, 5, "clips", 5),
    "windows:8/4@fps:2": (WindowsPolicy, "clip", False, None, "itself", None),
}


@pytest.mark.parametrize("text", BUILT_IN)
def test_built_in_capabilities(text):
    cls, unit, scores, fixed_length, served_from, length = BUILT_IN[text]
    p = parse_policy(text)
    assert type(p) is cls and isinstance(p, FramePolicy) and str(p) == text and parse_policy(str(p)) == p
    assert (p.unit, p.needs_scores, p.fixed_length, p.fixed, p.served_from, p.length(10)) == (
        unit, scores, fixed_length, fixed_length is not None, served_from, length)
    assert p.kind == text.split(":")[0] and p.scored_frames == (3 if scores else 0)
    assert hash(p) == hash(parse_policy(text))  # views are dict keys (a sweep's shared reads)


def test_every_kind_is_registered_with_a_selection():
    assert {c.prefix for c in policy_classes()} >= {"clips", "windows", "uniform", "keyframes", "stride", "fps"}
    import featcache.video.clips  # noqa: F401  (registers the clip policies' selection)

    for text in BUILT_IN:
        assert callable(selection(parse_policy(text)))


def test_selection_dispatch():
    """The registered functions give the documented picks (hand-worked: docs/decoding.md)."""
    n, stamps = 10, np.arange(10) / 4.0  # 4 fps
    scores = np.array([0, 1, 5, 0, 2, 9, 0, 0, 3, 0], dtype=np.float32)
    assert policy_indices(parse_policy("uniform:4"), n).tolist() == [1, 3, 6, 8]  # floor((i + .5) * 10 / 4)
    assert policy_indices(parse_policy("stride:3"), n).tolist() == [0, 3, 6, 9]
    assert policy_indices(parse_policy("fps:2"), n, stamps=stamps).tolist() == [0, 2, 4, 6, 8]  # 0, .5, 1, ... s
    assert policy_indices(parse_policy("keyframes:3"), n, scores).tolist() == [2, 5, 8]  # scores 5, 9, 3
    with pytest.raises(ValueError, match="needs LUV scores"):
        policy_indices(parse_policy("keyframes:3"), n)


def test_helpers_over_policy_sets():
    ps = [parse_policy(t) for t in ("uniform:4", "stride:2", "keyframes:6")]
    assert scores_needed(ps) and not scores_needed(ps[:2])
    assert short_below(ps) == 6 and short_below([parse_policy("stride:2")]) == 1
    assert UniformPolicy(4).multiview_pool(3) == UniformPolicy(12) and KeyFramePolicy(4).multiview_pool(3) is None
    assert default_view(["stride:1", "keyframes:4", "uniform:16"]) == "uniform:16"
    assert default_view(["stride:1"]) == "uniform:8" and default_view(["windows:8/4@fps:4"], "clip") == "clips:8"


def _dispatch_sites(tree: ast.AST, prefixes: set[str]):
    """(line, what) of every comparison of ``.kind`` with a policy prefix and every
    ``.startswith(...)`` on a policy prefix."""
    def names_prefix(node) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value.split(":")[0] in prefixes
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            return names_prefix(node.values[0])
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_prefix(e) for e in node.elts)
        return False

    def is_kind(node) -> bool:  # x.kind or getattr(x, "kind", ...)
        return (isinstance(node, ast.Attribute) and node.attr == "kind" or isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "getattr" and len(node.args) > 1
                and getattr(node.args[1], "value", None) == "kind")

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(map(is_kind, sides)) and any(map(names_prefix, sides)):
                yield node.lineno, "kind compared with a policy prefix"
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
                and node.args and names_prefix(node.args[0])):
            yield node.lineno, "startswith on a policy prefix"


def test_kind_dispatch_lives_in_the_policy_modules():
    prefixes = {c.prefix for c in policy_classes()}
    sample = ast.parse('p.kind == "keyframes"\nq.kind in ("clips", "windows")\ns.startswith(f"uniform:{n}")\n'
                       'getattr(p, "kind", "") == "clips"\nh.kind == "amflow"\nk.startswith("head.")')
    assert sorted(line for line, _ in _dispatch_sites(sample, prefixes)) == [1, 2, 3, 4]  # the checker finds them
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in POLICY_MODULES:
            found += [f"featcache/{rel}:{line}: {what}" for line, what in _dispatch_sites(ast.parse(path.read_text()),
                                                                                           prefixes)]
    assert not found, "read the policy's capabilities instead (CONTRIBUTING.md, frame policy recipe):\n" + "\n".join(found)
