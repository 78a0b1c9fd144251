"""`statemesh bench all` and its table: goals met, not met, missing; failures recorded.

The table builder is fed synthetic results; the runner is fed fake suite modules (plain
objects with `HELP`, `add_arguments` and `run`), so a failing suite is a real exception
or a real usage error, not a mock. One slow test runs the cheap real suites end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks._plot import add_plot_argument, usage
from benchmarks.report import (
    GOALS,
    QUICK,
    Goal,
    SuiteOutcome,
    build_rows,
    render_markdown,
    run_all,
    suite_argv,
)
from cli.bench import SUITES
from cli.main import main

GOOD = {
    "storage": {
        "durable_ops_per_s": 60_000.0,
        "raw_ops_per_s": 100_000.0,
        "ratio": 0.6,
        "recovery_updates_per_s": 250_000.0,
        "recovery_updates": 1_000_000,
    },
    "crash": {
        "acked_lost": 0,
        "acked_writes": 900,
        "silent_corruptions": 0,
        "trials": 4,
        "corruption_trials": 1,
        "corruptions_detected": 1,
    },  # fmt: skip
    "throughput": {
        "levels": {"replicas=1": {"ops_per_s": 30_000.0}},
        "raw_write_ops_per_s": 100_000.0,
        "ratio_replicated_vs_raw": 0.3,
        "peers": 3,
        "processes": 3,
    },
    "convergence": {
        "rounds": 4,
        "rounds_goal": 11.29,
        "peers": 50,
        "converge_ms": 640.0,
        "bytes_total": 100,
        "baseline_bytes_total": 1000,
        "bytes_ratio_vs_baseline": 0.1,
        "baseline_converge_ms": 900.0,
    },  # fmt: skip
    "failover": {
        "rto_ms_p50": 900.0,
        "rto_ms_p99": 1300.0,
        "acked_lost": 0,
        "mode": "netns",
        "detect_ms_p50": 800.0,
        "detect_ms_p99": 1000.0,
        "takeovers": 3,
        "trials": 3,
    },  # fmt: skip
    "wire": {
        "bytes_per_update": 3548.0,
        "raw_update_bytes": 3428.0,
        "overhead_ratio": 1.035,
        "batch_messages": 16,
        "idle_bytes_per_peer_per_s": 1204.0,
        "idle_bytes_per_peer_per_s_no_documents": 1200.0,
        "documents": 10_000,
    },  # fmt: skip
}


def _ok(results: dict) -> dict[str, SuiteOutcome]:
    return {name: SuiteOutcome("ok", result=r) for name, r in results.items()}


def test_every_suite_has_goals_and_quick_sizes_its_parser_accepts() -> None:
    assert {g.suite for g in GOALS} == set(SUITES)
    for name in SUITES:
        module = __import__(f"benchmarks.{name}", fromlist=["run"])
        argv = suite_argv(name, module, Path("/tmp"), quick=True)
        assert argv[: len(QUICK[name])] == QUICK[name]
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        parser.parse_args(argv)  # exits 2 if a quick flag no longer exists


def test_all_goals_met_gives_yes_on_every_row() -> None:
    rows = build_rows(_ok(GOOD))
    assert len(rows) == len(GOALS)
    assert [r.met for r in rows] == ["yes"] * len(GOALS), rows
    storage = rows[0]
    assert (storage.value, storage.ratio) == ("60,000", "0.6")
    assert storage.baseline == "100,000 (raw pycrdt writes/s)"
    rounds = next(r for r in rows if r.figure.startswith("gossip rounds"))
    assert rounds.goal == "<= 2 log2(peers) = 11.3"  # the target the suite computed
    idle = rows[-1]
    assert idle.notes == "10,000 documents"


@pytest.mark.parametrize(
    ("suite", "key", "bad", "figure_start"),
    [
        ("storage", "ratio", 0.49, "durable writes"),
        ("storage", "recovery_updates_per_s", 99_999.0, "log recovery"),
        ("crash", "acked_lost", 1, "acknowledged writes lost after"),
        ("crash", "silent_corruptions", 2, "silent"),
        ("throughput", "ratio_replicated_vs_raw", 0.01, "replicated"),
        ("convergence", "rounds", 12, "gossip rounds"),
        ("convergence", "bytes_ratio_vs_baseline", 0.25, "bytes sent"),  # strict: < 0.25
        ("failover", "rto_ms_p50", 1000.0, "RTO p50"),
        ("failover", "rto_ms_p99", 2500.0, "RTO p99"),
        ("failover", "acked_lost", 1, "acknowledged writes lost at"),
        ("wire", "overhead_ratio", 1.5, "bytes per sealed"),
        ("wire", "idle_bytes_per_peer_per_s", 2048.0, "idle gossip"),
    ],
)
def test_a_figure_past_its_goal_is_not_met(
    suite: str, key: str, bad: float, figure_start: str
) -> None:
    results = json.loads(json.dumps(GOOD))
    results[suite][key] = bad
    rows = build_rows(_ok(results))
    by_figure = {r.figure: r for r in rows}
    (row,) = [r for f, r in by_figure.items() if f.startswith(figure_start)]
    assert row.met == "no", row
    assert sum(r.met == "no" for r in rows) == 1, [r for r in rows if r.met != "yes"]


def test_a_missing_figure_is_reported_missing_never_met() -> None:
    results = json.loads(json.dumps(GOOD))
    del results["throughput"]["ratio_replicated_vs_raw"]
    results["convergence"]["rounds"] = None  # the suite's way of saying "did not converge"
    del results["wire"]["idle_bytes_per_peer_per_s"]
    del results["crash"]["corruption_trials"]  # only a note's field: the goal still stands
    rows = {r.figure: r for r in build_rows(_ok(results))}
    assert rows["replicated commits/s (replicas=1)"].met == "missing"
    assert "ratio_replicated_vs_raw" in rows["replicated commits/s (replicas=1)"].notes
    assert rows["gossip rounds for a burst to reach every peer"].met == "missing"
    assert rows["idle gossip, bytes/peer/s"].met == "missing"
    assert rows["idle gossip, bytes/peer/s"].value == ""
    assert rows["silent corruptions"].met == "yes"
    assert rows["silent corruptions"].notes == "1 of ? byte-flip trials detected"


def test_failed_and_skipped_suites_show_on_their_rows() -> None:
    outcomes = _ok({k: v for k, v in GOOD.items() if k not in ("crash", "wire")})
    outcomes["crash"] = SuiteOutcome("failed", error="RuntimeError: writer did not start")
    outcomes["wire"] = SuiteOutcome("skipped", note="skipped with --skip")
    rows = build_rows(outcomes)
    crash = [r for r in rows if r.suite == "crash"]
    assert {r.met for r in crash} == {"no (suite failed)"}
    assert crash[0].notes == "RuntimeError: writer did not start"
    assert {r.met for r in rows if r.suite == "wire"} == {"skipped"}


def test_markdown_has_the_command_on_top_and_one_row_per_goal() -> None:
    goals = (Goal("x", "a | b", "v", "<", 1.0, goal_text="< 1"),)
    rows = build_rows({"x": SuiteOutcome("ok", result={"v": 0.5})}, goals)
    machine = {"nproc": 2, "load_average_before": [1.0, 2.0, 3.0], "python": "3.11"}
    text = render_markdown(rows, command="statemesh bench all --out d", machine=machine)
    lines = text.splitlines()
    assert lines[0] == "# statemesh benchmarks"
    assert "`statemesh bench all --out d`" in lines[2]
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0].startswith("| suite | figure | value | baseline (same run) | ratio |")
    assert table[2] == "| x | a \\| b | 0.5 |  |  | < 1 | yes |  |"  # the pipe is escaped


def _fake_suite(run, *, plot: bool = False) -> SimpleNamespace:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--size", type=int, default=7)
        if plot:
            add_plot_argument(parser, "a picture")

    return SimpleNamespace(HELP="fake", add_arguments=add_arguments, run=run)


def test_a_failing_suite_is_recorded_and_the_rest_still_run(tmp_path: Path) -> None:
    ran: list[str] = []

    def good(args: argparse.Namespace) -> dict:
        ran.append("good")
        if args.plot:
            Path(args.plot).write_bytes(b"\x89PNG")
        return {"size": args.size}

    def boom(args: argparse.Namespace) -> dict:
        ran.append("boom")
        raise RuntimeError("disk on fire\nsecond line")

    def bad_usage(args: argparse.Namespace) -> dict:
        ran.append("usage")
        raise usage("bad", "--size must be at least 1")

    suites = {
        "boom": _fake_suite(boom),
        "bad": _fake_suite(bad_usage),
        "good": _fake_suite(good, plot=True),
        "left": _fake_suite(good),
    }
    log = tmp_path / "log.txt"
    with log.open("w") as stream:
        report = run_all(suites, tmp_path, skip=["left"], command="cmd", stream=stream)
    assert ran == ["boom", "usage", "good"]
    assert report["failed"] == ["bad", "boom"]
    s = report["suites"]
    assert s["boom"]["error"] == "RuntimeError: disk on fire"
    assert s["bad"]["error"] == "statemesh bench bad: --size must be at least 1"
    assert s["good"] == {**s["good"], "status": "ok", "result": {"size": 7}}
    assert s["good"]["plot"] == str(tmp_path / "good.png")
    assert s["left"]["status"] == "skipped"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["failed"] == ["bad", "boom"]
    assert on_disk["machine"]["nproc"] >= 1
    assert len(on_disk["machine"]["load_average_after"]) == 3
    assert (
        (tmp_path / "results.md").read_text().startswith("# statemesh benchmarks\n\nCommand: `cmd`")
    )
    progress = log.read_text()
    assert "[bench all] [1/3] boom" in progress
    assert "[bench all] [3/3] good: ok" in progress


def test_bench_all_exits_1_when_a_suite_fails_and_0_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import cli.bench

    def broken(args: argparse.Namespace) -> dict:
        raise ValueError("nope")

    fakes = {"storage": _fake_suite(lambda a: {"ratio": 0.7}), "crash": _fake_suite(broken)}
    monkeypatch.setattr(cli.bench, "available_suites", lambda: fakes)
    assert main(["bench", "all", "--out", str(tmp_path / "a")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("# statemesh benchmarks")
    assert "statemesh bench all --out" in out
    assert main(["bench", "all", "--out", str(tmp_path / "b"), "--skip", "crash", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["suites"]["crash"]["status"] == "skipped"
    assert report["suites"]["storage"]["result"] == {"ratio": 0.7}


def test_bad_out_is_a_usage_error_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    assert main(["bench", "all", "--out", str(a_file)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert a_file.read_text() == "keep me"  # nothing lost
    under_a_file = a_file / "sub"
    assert main(["bench", "all", "--out", str(under_a_file)]) == 2
    assert "cannot create it" in capsys.readouterr().err


def test_unknown_skip_is_a_usage_error(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "all", "--out", str(tmp_path), "--skip", "storage", "bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    assert not (tmp_path / "results.json").exists()


def test_missing_out_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "all"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_of_the_cheap_suites_writes_table_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    skip = ["crash", "failover", "storage", "throughput"]
    code = main(["bench", "all", "--quick", "--out", str(tmp_path), "--skip", *skip])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "results.json").read_text())
    for name in ("convergence", "wire"):
        assert report["suites"][name]["status"] == "ok", report["suites"][name]
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    mets = {g["figure"]: g["met"] for g in report["goals"] if g["suite"] in ("convergence", "wire")}
    assert all(m in ("yes", "no") for m in mets.values()), mets
    assert "[bench all] [2/2] wire" in captured.err


def _fake_failover(seen: list[argparse.Namespace]) -> SimpleNamespace:
    """A failover suite that records its arguments and reports the mode it was given."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--trials", type=int, default=20)
        parser.add_argument("--loopback", action="store_true")

    def run(args: argparse.Namespace) -> dict:
        seen.append(args)
        mode = "loopback" if args.loopback else "netns"
        return {**GOOD["failover"], "mode": mode, "trials": args.trials}

    return SimpleNamespace(HELP="fake failover", add_arguments=add_arguments, run=run)


def test_failover_without_netns_runs_on_loopback_and_the_table_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mesh.hosts

    seen: list[argparse.Namespace] = []
    fake = _fake_failover(seen)
    monkeypatch.setattr(mesh.hosts, "available", lambda: "not root")
    report = run_all({"failover": fake}, tmp_path, quick=True, stream=sys.stderr)
    assert seen[0].loopback and seen[0].trials == int(QUICK["failover"][1])
    rows = [g for g in report["goals"] if g["suite"] == "failover"]
    assert all("loopback, not namespace hosts (not root)" in g["notes"] for g in rows), rows
    assert "loopback, not namespace hosts" in (tmp_path / "results.md").read_text()


def test_failover_runs_on_namespace_hosts_when_mesh_hosts_says_they_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mesh.hosts

    seen: list[argparse.Namespace] = []
    fake = _fake_failover(seen)
    # mesh.hosts.available is the one judge of whether namespace hosts can run here.
    monkeypatch.setattr(mesh.hosts, "available", lambda: None)
    report = run_all({"failover": fake}, tmp_path, quick=True, stream=sys.stderr)
    assert not seen[0].loopback
    rows = [g for g in report["goals"] if g["suite"] == "failover"]
    assert rows and not any("loopback" in g["notes"] for g in rows), rows
