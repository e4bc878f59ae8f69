"""The deployable schedules: the Databricks Asset Bundle and the Airflow DAGs run real entry points with
arguments the CLI accepts (parsed by its own parser, the config loaded, its pre-Spark checks run)."""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml
from longtail.cli import _check_options, build_parser
from longtail.core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
RUN_DATE = "2026-01-04"
#: Both schedules run these commands in this order (the first word of each task's arguments).
WEEKLY = ["sequences", "encode", "train", "evaluate"]
NIGHTLY = ["sequences", "encode", "score", "similar-items"]


def _job_command(script: Path) -> str:
    """The CLI command a ``jobs/<name>.py`` entry point runs: the first item of its ``main([...])`` call."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main" and node.args:
            first = node.args[0]
            if isinstance(first, ast.List) and first.elts and isinstance(first.elts[0], ast.Constant):
                return first.elts[0].value
    raise AssertionError(f"{script}: no main([\"<command>\", ...]) call")


def _check_cli(argv: list[str], where: str) -> None:
    """``argv`` parses with the CLI's parser, its config loads and the CLI's own checks pass."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"{where}: the CLI rejects {argv}") from None
    conf = args.conf_after or args.conf
    assert conf is None or Path(conf).is_file(), f"{where}: config file {conf} does not exist"
    cfg = load_config(conf, [*args.overrides, *args.overrides_after])
    _check_options(cfg, args)
    if args.command == "train":
        assert args.warm_start, f"{where}: the scheduled retrain should carry over (--warm-start)"


# --------------------------------------------------------------------------- Databricks Asset Bundle


def _bundle() -> tuple[dict, dict[str, tuple[dict, Path]]]:
    """databricks.yml and its jobs, each with the file that defines it (relative paths start there)."""
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text())
    jobs = {}
    for pattern in bundle["include"]:
        for path in ROOT.glob(pattern):
            for name, job in yaml.safe_load(path.read_text())["resources"]["jobs"].items():
                jobs[name] = (job, path)
    return bundle, jobs


def _resolve(text: str, variables: dict[str, str]) -> str:
    """Bundle substitutions (``${var.x}``: its default; ``${workspace.file_path}``: the synced checkout)
    and job dynamic values (``{{job.start_time.iso_date}}``)."""
    text = re.sub(r"\$\{var\.(\w+)\}", lambda m: variables[m.group(1)], text)
    text = text.replace("${workspace.file_path}", str(ROOT))
    text = text.replace("{{job.start_time.iso_date}}", RUN_DATE)
    assert "${" not in text and "{{" not in text, f"unresolved reference in {text!r}"
    return text


def test_the_bundle_builds_the_wheel_the_tasks_install():
    bundle, jobs = _bundle()
    assert bundle["bundle"]["name"] == "longtail" and set(jobs) == {"longtail_weekly_train", "longtail_nightly"}
    artifact = bundle["artifacts"]["longtail"]
    assert artifact["type"] == "whl" and (ROOT / artifact["path"] / "pyproject.toml").is_file()
    assert "-w dist" in artifact["build"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name, (job, path) in jobs.items():
        for task in job["tasks"]:
            where = f"{name}.{task['task_key']}"
            wheel = task["python_wheel_task"]
            assert wheel["package_name"] == project["name"], where
            assert project["scripts"][wheel["entry_point"]] == "longtail.cli:main", where
            libraries = [(path.parent / lib["whl"]).resolve() for lib in task["libraries"]]
            assert libraries == [(ROOT / "dist" / "*.whl").resolve()], where


@pytest.mark.parametrize("name, commands", [("longtail_weekly_train", WEEKLY), ("longtail_nightly", NIGHTLY)])
def test_every_bundle_task_runs_a_valid_cli_command(name, commands):
    bundle, jobs = _bundle()
    variables = {k: str(v["default"]) for k, v in bundle["variables"].items()}
    job, _ = jobs[name]
    clusters = {c["job_cluster_key"] for c in job["job_clusters"]}
    keys = [t["task_key"] for t in job["tasks"]]
    assert job["schedule"]["quartz_cron_expression"] and job["max_concurrent_runs"] == 1
    seen = []
    for task in job["tasks"]:
        where = f"{name}.{task['task_key']}"
        assert task["job_cluster_key"] in clusters, where
        assert all(d["task_key"] in keys[: keys.index(task["task_key"])] for d in task.get("depends_on", [])), where
        argv = [_resolve(str(p), variables) for p in task["python_wheel_task"]["parameters"]]
        _check_cli(argv, where)
        seen.append(argv[0])
    assert seen == commands


# --------------------------------------------------------------------------- Airflow


class _Operator:
    """Stands in for ``SparkSubmitOperator``: records its arguments and the tasks after it."""

    def __init__(self, **kwargs):
        self.kwargs, self.downstream = kwargs, []
        _Dag.current.tasks.append(self)

    def __rshift__(self, other):
        self.downstream.append(other)
        return other


class _Dag:
    """Stands in for ``airflow.DAG``: a context manager that collects the tasks made inside it."""

    current: "_Dag | None" = None
    made: list["_Dag"] = []

    def __init__(self, dag_id, **kwargs):
        self.dag_id, self.kwargs, self.tasks = dag_id, kwargs, []
        _Dag.made.append(self)

    def __enter__(self):
        _Dag.current = self
        return self

    def __exit__(self, *exc):
        _Dag.current = None


@pytest.fixture()
def airflow_dags(monkeypatch):
    """The DAGs of jobs/airflow_dag.py, imported against stand-ins (apache-airflow is not a dependency)."""
    airflow = types.ModuleType("airflow")
    airflow.DAG = _Dag
    spark_submit = types.ModuleType("airflow.providers.apache.spark.operators.spark_submit")
    spark_submit.SparkSubmitOperator = _Operator
    monkeypatch.setitem(sys.modules, "airflow", airflow)
    monkeypatch.setitem(sys.modules, "airflow.sdk", None)  # Airflow 2's import path
    monkeypatch.setitem(sys.modules, "airflow.providers.apache.spark.operators.spark_submit", spark_submit)
    monkeypatch.setattr(_Dag, "made", [])
    spec = importlib.util.spec_from_file_location("longtail_airflow_dag", JOBS / "airflow_dag.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return {dag.dag_id: dag for dag in _Dag.made}


def _render(text: str) -> str:
    """Airflow's Jinja templates in the arguments, as a run would render them (the run date)."""
    return re.sub(r"\{\{[^}]*\}\}", RUN_DATE, text)


@pytest.mark.parametrize("dag_id, commands", [("longtail_weekly_train", WEEKLY), ("longtail_nightly", NIGHTLY)])
def test_every_airflow_task_submits_an_entry_point_with_valid_arguments(airflow_dags, dag_id, commands):
    dag = airflow_dags[dag_id]
    assert dag.kwargs["schedule"] and dag.kwargs["catchup"] is False
    seen = []
    for task in dag.tasks:
        where = f"{dag_id}.{task.kwargs['task_id']}"
        script = Path(task.kwargs["application"])
        assert script.parent == JOBS and script.is_file(), where
        command = _job_command(script)
        _check_cli([command, *(_render(str(a)) for a in task.kwargs["application_args"])], where)
        assert task.kwargs["py_files"].endswith(".whl"), where
        seen.append(command)
    assert seen == commands
    # One chain, in that order.
    for before, after in zip(dag.tasks, dag.tasks[1:]):
        assert before.downstream == [after]
