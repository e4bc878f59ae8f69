"""CLI: arguments, the same options after the command (spark-submit jobs), one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from longtail.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_every_contract_command_has_a_job_script():
    for command in ("demo", "ingest", "sequences", "encode", "neighbors", "train", "evaluate", "score",
                    "similar-items", "run"):
        job = ROOT / "jobs" / f"{command.replace('-', '_')}.py"
        assert job.is_file(), job
        assert f'main(["{command}"' in job.read_text()


def test_options_after_the_command_are_accepted():
    args = build_parser().parse_args(["score", "--conf", "x.yaml", "--set", "a=1", "--run-date", "2026-01-02", "--top-k", "5"])
    assert args.conf_after == "x.yaml" and args.overrides_after == ["a=1"]
    assert str(args.run_date) == "2026-01-02" and args.top_k == 5


def test_bad_run_date_is_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "--run-date", "23/11/2026"])


def test_config_error_is_one_line_and_exit_2(capsys):
    assert main(["sequences", "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.nope" in err[0] and err[0].startswith("longtail sequences: error:")


def test_missing_java_through_the_cli(tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "none"), "PATH": os.path.dirname(sys.executable)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "sequences.py"), "--set", f"warehouse={tmp_path}/wh"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Java not found" in proc.stderr and "Py4J" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, users", [
    (["encode"], True),                                   # the contract's default: items and users
    (["encode", "--no-users"], False),
    (["encode", "--set", "encode.users=false"], False),
    (["encode", "--set", "encode.users=false", "--users"], True),  # the option beats the key
])
def test_encode_encodes_the_user_texts_unless_told_not_to(monkeypatch, argv, users):
    from longtail.stages import encode
    from longtail.cli import _STAGES
    from longtail.core.config import load_config

    asked = []
    monkeypatch.setattr(encode, "run_encode", lambda wh, cfg, *, users: asked.append(users))
    args = build_parser().parse_args(argv)
    _STAGES["encode"](None, "wh", load_config(None, [*args.overrides, *args.overrides_after]), args)
    assert asked == [users]
