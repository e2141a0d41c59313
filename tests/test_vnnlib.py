"""VNN-LIB properties: parsing, refusals with one-line errors, result files; benchmark tables and their matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lipaudit.certify.spec import Verdict
from lipaudit.errors import UsageError
from lipaudit.io.vnnlib import parse_vnnlib, read_vnnlib, result_text
from lipaudit.vnncomp import InstanceResult, Suite, ToolAnswer, match, read_instances, read_tool_results, summarise


def _robustness_text(lo: list[float], hi: list[float], label: int, k: int, flipped: bool = False) -> str:
    lines = ["; a robustness property", *[f"(declare-const X_{i} Real)" for i in range(len(lo))],
             *[f"(declare-const Y_{j} Real)" for j in range(k)]]
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        lines += [f"(assert (<= X_{i} {b!r}))", f"(assert (>= X_{i} {a!r}))"] if not flipped else [
            f"(assert (>= {b!r} X_{i}))", f"(assert (<= {a!r} X_{i}))"]
    atoms = "\n".join(f"    (and (>= Y_{j} Y_{label}))" for j in range(k) if j != label)
    lines.append(f"(assert (or\n{atoms}\n))")
    return "\n".join(lines)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 12), k=st.integers(2, 6), data=st.data(), flipped=st.booleans())
def test_robustness_properties_round_trip(d: int, k: int, data: st.DataObject, flipped: bool) -> None:
    lo = [data.draw(st.floats(-5, 5)) for _ in range(d)]
    hi = [v + data.draw(st.floats(0, 3)) for v in lo]
    label = data.draw(st.integers(0, k - 1))
    prop = parse_vnnlib(_robustness_text(lo, hi, label, k, flipped))
    assert prop.lower.tolist() == lo and prop.upper.tolist() == hi  # float64, exactly the decimals written
    assert prop.label == label and prop.num_rows == k - 1 and prop.num_classes == k
    logits = torch.randn(5, k, dtype=torch.float64)
    others = [j for j in range(k) if j != label]
    torch.testing.assert_close(prop.margins(logits), logits[:, [label]] - logits[:, others])


def test_the_shared_benchmark_shape_parses(tmp_path: Path) -> None:
    text = _robustness_text([0.0, 0.25], [0.5, 1.0], 1, 3)
    path = tmp_path / "p.vnnlib"
    path.write_text(text)
    prop = read_vnnlib(path, (1, 2))
    assert prop.lower.shape == (1, 2) and prop.label == 1


def test_output_constraints_with_numbers_and_single_assertions() -> None:
    head = ("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)"
            "(assert (<= X_0 1))(assert (>= X_0 0))")
    prop = parse_vnnlib(head + "(assert (<= Y_0 -2.5))")  # unsafe: Y_0 <= -2.5  ⇒ margin Y_0 + 2.5 > 0
    assert prop.a.tolist() == [[1.0, 0.0]] and prop.b.tolist() == [2.5] and prop.label is None
    prop = parse_vnnlib(head + "(assert (>= Y_1 Y_0))")
    assert prop.a.tolist() == [[1.0, -1.0]] and prop.b.tolist() == [0.0]


@pytest.mark.parametrize(("text", "match_"), [
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= Y_0 0))", "no lower bound"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
     "(assert (or (and (>= Y_0 Y_1) (>= Y_0 0))))", "2 output constraints"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
     "(assert (>= Y_0 X_0))", "not a bound X_i"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))", "no output constraint"),
    ("(declare-const X_0 Real)(assert (<= X_0 1)", "truncated"),
    ("(declare-const X_0 Real))", "unbalanced"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
     "(assert (>= (+ Y_0 Y_0) 1))", "arithmetic"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 0))(assert (>= X_0 1))(assert (>= Y_0 0))",
     "empty"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (or (<= X_0 0) (>= X_0 1)))(assert (>= Y_0 0))",
     "no lower bound"),
    ("(define-fun f () Real 1)", "unsupported command"),
    ("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)", "without gaps"),
])
def test_other_shapes_are_refused_in_one_line(text: str, match_: str) -> None:
    with pytest.raises(UsageError, match=match_) as info:
        parse_vnnlib(text)
    assert "\n" not in str(info.value)


def test_input_count_must_match_the_model() -> None:
    with pytest.raises(UsageError, match="takes 4"):
        parse_vnnlib(_robustness_text([0.0] * 3, [1.0] * 3, 0, 2), (2, 2))


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No VNN-LIB file"):
        read_vnnlib(tmp_path / "missing.vnnlib")


def test_result_file_format() -> None:
    assert result_text("unsat") == "unsat\n"
    text = result_text("sat", torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([1.0, 2.0]))
    assert text.splitlines() == ["sat", "((X_0 0.5)", "(X_1 0.25)", "(Y_0 1.0)", "(Y_1 2.0))"]


def test_instances_results_and_matching(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    for name in ("net.onnx", "specs/p0.vnnlib", "specs/p1.vnnlib"):
        (tmp_path / name).write_text("x")
    (tmp_path / "inst.csv").write_text("net.onnx,./specs/p0.vnnlib,60\nnet.onnx,specs/p1.vnnlib,30.5\n")
    items = read_instances(tmp_path / "inst.csv")
    assert [i.timeout_s for i in items] == [60.0, 30.5]
    (tmp_path / "tool.csv").write_text(
        "bench,./benchmarks/b/net.onnx,./benchmarks/b/./specs/p0.vnnlib,1.0,UNSAT,2.5\n"
        "bench,./benchmarks/b/net.onnx,./benchmarks/b/specs/p1.vnnlib,1.0,timeout,30.0\n"
        "bench,./benchmarks/b/other.onnx,./benchmarks/b/specs/p0.vnnlib,1.0,SAT,3.0\n")
    name, answers = read_tool_results(tmp_path / "tool.csv")
    assert name == "tool"
    first, second = match(items[0], answers), match(items[1], answers)
    # the same network and property in two benchmarks: ambiguous unless the benchmark names one
    (tmp_path / "two.csv").write_text("b1,./benchmarks/b1/net.onnx,./benchmarks/b1/specs/p0.vnnlib,1,UNSAT,1\n"
                                      "b2,./benchmarks/b2/net.onnx,./benchmarks/b2/specs/p0.vnnlib,1,SAT,1\n")
    _, two = read_tool_results(tmp_path / "two.csv")
    assert match(items[0], two) is None
    picked = match(items[0], two, "b2")
    assert picked is not None and picked.verdict is Verdict.FALSIFIED
    assert first is not None and first.verdict is Verdict.VERIFIED and first.time_s == 2.5
    assert second is not None and second.verdict is Verdict.UNKNOWN

    def row(verdict: Verdict, other: ToolAnswer | None) -> InstanceResult:
        return InstanceResult("net.onnx", "p", 60.0, verdict, "BaB", 1.0, 3, None,
                              {} if other is None else {"tool": other})

    suite = Suite("inst.csv", ["tool"], [row(Verdict.FALSIFIED, first), row(Verdict.VERIFIED, second),
                                         row(Verdict.UNKNOWN, first)], 3, True, 1.0, 1)
    s = summarise(suite)
    assert s["contradictions"] == 1 and suite.results[0].contradictions == ["tool"]
    assert s["lipaudit"] == {"verified": 1, "falsified": 1, "unknown": 1, "decided": 2, "median_time_decided_s": 1.0}
    assert s["tool"]["decided_by_tool_only"] == 1 and s["tool"]["decided_by_lipaudit_only"] == 1
    json.dumps(suite.to_dict(), allow_nan=False)


@pytest.mark.parametrize(("text", "match_"), [
    ("net.onnx,p.vnnlib\n", "expected 'onnx,vnnlib,timeout'"),
    ("net.onnx,p.vnnlib,soon\n", "not a number"),
    ("net.onnx,p.vnnlib,0\n", "positive"),
    ("missing.onnx,p.vnnlib,10\n", "no file"),
    ("\n", "empty"),
])
def test_bad_instance_lists(tmp_path: Path, text: str, match_: str) -> None:
    (tmp_path / "net.onnx").write_text("x")
    (tmp_path / "p.vnnlib").write_text("x")
    (tmp_path / "i.csv").write_text(text)
    with pytest.raises(UsageError, match=match_):
        read_instances(tmp_path / "i.csv")
