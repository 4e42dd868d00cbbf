"""transformers' own common model tests (ModelTesterMixin, ConfigTester) on our classes, held to Marian's results.

Issue 10: those tests pass for our classes wherever they pass for MarianModel / MarianMTModel / MarianDecoder /
MarianForCausalLM with the same tester settings, except the by-design differences listed (with a reason each) in
`transformers_suite.BY_DESIGN`. The run itself is `tests/hf_transformer/transformers_suite.py`, in a fresh interpreter because the
upstream tests change process-wide state (seeds, default dtype, logging). The first run downloads the sdist of the
installed transformers from the package registry into a cache folder (about 20 s; see
`transformers_suite.ensure_upstream`); the whole module takes 60-90 s on 2 CPU cores. The upstream module
imports `parameterized` (to be listed in the `test` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import transformers_suite as suite

RUN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def common_run(tmp_path_factory) -> dict:
    problem = None
    try:
        suite.ensure_upstream(download=True)
    except RuntimeError as error:  # no registry: say what to run where there is one
        problem = f"{error}\nFetch them once with: python tests/hf_transformer/transformers_suite.py --fetch-only"
    if problem:
        pytest.fail(problem, pytrace=False)
    output = tmp_path_factory.mktemp("transformers_common") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [sys.executable, suite.__file__, "--no-download", "--output", str(output)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL,
    )
    if not output.is_file():
        pytest.fail(f"The common-test run crashed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-4000:]}", pytrace=False)
    return json.loads(output.read_text())


def describe(rows: list[dict]) -> str:
    """One paragraph per distinct outcome detail (a missing constructor argument fails every test alike)."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        key = f"marian {row['marian']}, ours {row['ours']}: {row['detail'][:300]}"
        groups.setdefault(key, []).append(row["test"])
    return "\n".join(f"  {key}\n    {len(names)} tests: {', '.join(names)}" for key, names in groups.items())


def test_the_marian_reference_runs(common_run):
    """The harness works: the Marian classes pass the core tests (a reference failing everything would make the
    comparison below pass for free)."""
    comparison = suite.compare(common_run)
    assert not comparison["broken_reference"], "\n".join(comparison["broken_reference"])
    for role in [role for role, families in common_run["results"].items() if "marian" in families]:
        passed = sum(o["outcome"] == "passed" for o in common_run["results"][role]["marian"].values())
        assert passed >= 60, f"Marian passes only {passed} common tests as {role}: the harness is broken"


@pytest.mark.parametrize("role", suite.ROLES)
def test_common_tests_pass_where_marian_passes(common_run, role):
    violations = [row for row in suite.compare(common_run)["violations"] if row["role"] == role]
    if violations:
        pytest.fail(
            f"transformers {common_run['transformers']}: {len(violations)} common tests pass for Marian "
            f"({suite.REFERENCE_ROLE[role]}) but not for ours ({role}) (or are in OURS_MUST_PASS); fix ours, or add "
            f"the test to transformers_suite.BY_DESIGN with the reason:\n{describe(violations)}", pytrace=False)


def test_by_design_differences_are_still_differences(common_run):
    stale = suite.compare(common_run)["stale"]
    if stale:
        pytest.fail(f"These by-design entries now pass for ours: remove them from BY_DESIGN\n{describe(stale)}",
                    pytrace=False)
    for (role, name), entry in suite.BY_DESIGN.items():
        assert role in suite.ROLES and name.startswith("test_") and len(entry.reason) > 20 and entry.symptom


def test_the_rule_catches_a_regression():
    """`compare` on made-up results: each way of breaking the rule is reported, and nothing else."""
    (role, excused), entry = next(iter(suite.BY_DESIGN.items()))
    reference_ok = {name: ("passed", "") for name in suite.REFERENCE_MUST_PASS}
    marian = {**reference_ok, "test_a": ("passed", ""), "test_b": ("passed", ""), "test_c": ("passed", ""),
              "test_d": ("failed", "x"), excused: ("passed", "")}
    ours = {**reference_ok, "test_a": ("passed", ""), "test_b": ("failed", "AssertionError"),
            "test_c": ("skipped", "no reason"), "test_d": ("failed", "x"), excused: ("failed", f"... {entry.symptom}")}

    def run(marian, ours, ours_role=role):
        def outcomes(table):
            return {name: {"outcome": outcome, "detail": detail} for name, (outcome, detail) in table.items()}
        results = {suite.REFERENCE_ROLE[ours_role]: {"marian": outcomes(marian)}}
        results.setdefault(ours_role, {})["vaswani"] = outcomes(ours)
        return suite.compare({"results": results})

    comparison = run(marian, ours)
    assert sorted(row["test"] for row in comparison["violations"]) == ["test_b", "test_c"]
    assert comparison["stale"] == [] and comparison["broken_reference"] == []
    # the by-design entry excuses its symptom only
    assert excused in [row["test"] for row in run(marian, {**ours, excused: ("failed", "TypeError")})["violations"]]
    # the difference went away: the entry is stale
    assert [row["test"] for row in run(marian, {**ours, excused: ("passed", "")})["stale"]] == [excused]
    # the reference fails a core test: the harness is broken
    assert run({**marian, "test_save_load": ("failed", "")}, ours)["broken_reference"]
    # Marian is exempt, ours must pass
    (role, name), _ = next(iter(suite.OURS_MUST_PASS.items()))
    comparison = run({**reference_ok, name: ("skipped", "")}, {**reference_ok, name: ("failed", "")}, role)
    assert [row["test"] for row in comparison["violations"]] == [name]
