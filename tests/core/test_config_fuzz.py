"""Generated bad settings (hypothesis): YAML documents and ``--set KEY=VALUE`` strings for
:func:`~longtail.core.config.load_config`.

Every generated input either loads into a valid, frozen :class:`Config` holding what was given,
or fails with one :class:`ConfigError` line naming the key it is about (or the file and line of a
YAML syntax error, or the ``--set`` string), never another exception. A few cases also go through
``longtail.cli.main``: exit status 2 and one line, before Spark starts. The seed corpus is
``tests/corpus/config/``. ``LONGTAIL_FAULTS_FULL=1`` runs 15x as many generated cases.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from fuzz_settings import bounded
from hypothesis import example, given
from hypothesis import strategies as st
from longtail.core.config import Config, from_dict, load_config, to_dict
from longtail.core.errors import ConfigError

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "config"


# --------------------------------------------------------------------------- the key space


def _keys(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    """Every dotted key of a config section with its declared type; sections map to their class."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, typing.Any] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        out[prefix + f.name] = kind
        if dataclasses.is_dataclass(kind):
            out.update(_keys(kind, f"{prefix}{f.name}."))
    return out


KEYS = _keys(Config)
LEAVES = sorted(k for k, t in KEYS.items() if not dataclasses.is_dataclass(t))
SECTIONS = sorted(k for k, t in KEYS.items() if dataclasses.is_dataclass(t))
DEFAULTS = Config()
#: Keys the checks across sections name (whichever of the keys involved was generated).
CROSS_KEYS = {"train.heads", "score.hybrid.mmr_candidates", "evaluate.k", "vacuum.retention_hours", "encode.pca_dim"}

# Raw YAML text for values yaml.safe_dump cannot write (ints Python will not print, special floats).
RAW = {
    "__HUGE__": "1" + "0" * 5000,
    "__NEG_HUGE__": "-" + "9" * 4400,
    "__NAN__": ".nan",
    "__INF__": ".inf",
    "__NEG_INF__": "-.inf",
    "__BINARY__": "!!binary aGVsbG8=",
    "__PYOBJ__": "!!python/object/apply:os.getcwd []",
    "__SET__": "!!set {a, b}",
    "__DATE__": "2024-02-30",
    "__TIMESTAMP__": "2024-01-01T10:00:00Z",
    "__ALIAS_LOOP__": "&loop [*loop]",
}

TEXT = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", " ", "4g", "local[2]", "sampled", "full", "{title}", "{title", "{0}", "\ud800x",
                     "trаin", "名前", "a\nb", "yes", "off", "null", "0x10", "1e3", "1_000"]),
)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 3, 64, 1000, 1001, 2**32, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.5, 1e-300, 1e300]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, st.sampled_from(sorted(RAW)))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# Keys of a YAML document: real ones (leaves and sections, dotted: they become nested), unknown ones.
KEY_PATHS = st.one_of(
    st.sampled_from(LEAVES), st.sampled_from(LEAVES), st.sampled_from(SECTIONS),
    st.sampled_from(LEAVES).map(lambda k: k + ".extra"),
    st.sampled_from(SECTIONS).map(lambda k: k + ".unknown_key"),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12),
    st.sampled_from(["trian.epochs", "Train.epochs", "train.Epochs", "1", "true", "null", "é", "a b",
                     "spark.conf.x.y"]),
)


def _get(tree: dict, key: str) -> typing.Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def _nudged(key: str) -> st.SearchStrategy:
    """A value the key likely accepts: its default, or a number near it (the success path)."""
    value = _get(to_dict(DEFAULTS), key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return st.just(value)
    return st.sampled_from([value, value + 1, value * 2, value / 2 if isinstance(value, float) else value + 3])


LIKELY = st.sampled_from(LEAVES).flatmap(lambda k: st.tuples(st.just(k), _nudged(k)))
ASSIGNMENTS = st.one_of(st.tuples(KEY_PATHS, VALUES), LIKELY)


def _nest(assignments: list[tuple[str, typing.Any]]) -> dict:
    """Nested dicts from dotted keys; a later key that runs through an earlier value replaces it."""
    doc: dict = {}
    for key, value in assignments:
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return doc


def _dump(doc: typing.Any, unicode: bool) -> str:
    text = yaml.safe_dump(doc, allow_unicode=unicode, default_flow_style=False, sort_keys=False)
    for marker, raw in RAW.items():
        text = text.replace(marker, raw)
    return text


@st.composite
def yaml_documents(draw) -> bytes:
    """A YAML file setting valid and unknown keys to any values, perhaps made invalid YAML."""
    assignments = draw(st.lists(ASSIGNMENTS, max_size=5))
    doc: typing.Any = _nest(assignments)
    top = draw(st.sampled_from(["mapping"] * 6 + ["list", "scalar", "empty", "null"]))
    if top == "list":
        doc = [doc]
    elif top == "scalar":
        doc = draw(SCALARS)
    elif top in ("empty", "null"):
        doc = None
    text = "" if top == "empty" else _dump(doc, draw(st.booleans()))
    data = text.encode("utf-8", "surrogatepass")
    mutation = draw(st.sampled_from([None] * 6 + ["truncate", "insert", "tab", "bom", "bad_utf8", "nul", "two_docs"]))
    if mutation == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == "insert":
        at = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"{", b"[", b"'", b'"', b": :", b"\n  - x\n", b"*nope", b"&a", b"%"]))
        data = data[:at] + junk + data[at:]
    elif mutation == "tab":
        data = data.replace(b"\n  ", b"\n\t", 1)
    elif mutation == "bom":
        data = b"\xef\xbb\xbf" + data
    elif mutation == "bad_utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xff\xc3(" + data[at:]
    elif mutation == "nul":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\x00" + data[at:]
    elif mutation == "two_docs":
        data = data + b"\n---\ntrain: {epochs: 3}\n"
    return data


OVERRIDE_VALUES = st.one_of(
    st.sampled_from(["3", "0", "-1", "2.5", "true", "maybe", "null", "~", "", "[1, 2", "{a: 1}", "[sampled, full]",
                     "[]", "{}", ".nan", ".inf", "-.inf", "1e400", "1" + "0" * 5000, "0x" + "f" * 5000, "'quoted",
                     "!!python/object/apply:os.getcwd []", "!!binary aGVsbG8=", "&a [*a]", "4g", "lots", "{title",
                     "local[2]", "a=b", "\ud800", "名前", "a: b", "- x", "%YAML 1.1", "*undefined"]),
    TEXT,
    NUMBERS.map(str),
)


@st.composite
def overrides(draw) -> list[str]:
    """``--set`` strings: real, unknown and malformed keys, with or without ``=``, any value."""
    items = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            key, value = draw(LIKELY)
            items.append(f"{key}={json.dumps(value)}")  # JSON is YAML's flow style
            continue
        key = draw(st.one_of(KEY_PATHS, st.sampled_from(["", " ", ".", "train.", ".train", "train..epochs", "a=b"])))
        sep = draw(st.sampled_from(["="] * 5 + ["", " = "]))
        items.append(f"{key}{sep}{draw(OVERRIDE_VALUES)}")
    return items


# --------------------------------------------------------------------------- the property

_KEY_MESSAGE = re.compile(r"config key (?P<key>.+?): ")


def _shown(key: str) -> str:
    """A key as a one-line message shows it: each part that is not printable as its repr."""
    return ".".join(p if p and p.isprintable() else repr(p) for p in key.split("."))


def _names_a_given_key(named: str, keys: list[str]) -> bool:
    """``named`` is a given key, a section on its path, a key inside what it set, or a key that a
    check across sections names."""
    if named in CROSS_KEYS:
        return True
    for key in map(_shown, keys):
        if key == named or key.startswith(named + ".") or named.startswith(key + "."):
            return True
    return False


def _paths(tree: typing.Any, prefix: str = "") -> list[str]:
    """Every dotted key path of nested mappings."""
    if not isinstance(tree, dict):
        return []
    out = []
    for k, v in tree.items():
        try:
            name = f"{prefix}{k}"
        except ValueError:  # an integer key too long to print
            continue
        out += [name, *_paths(v, name + ".")]
    return out


def file_keys(data: bytes) -> list[str]:
    """The key paths of a YAML file, as PyYAML reads it (none when it cannot)."""
    try:
        return _paths(yaml.safe_load(data.decode("utf-8")))
    except (ValueError, yaml.YAMLError):
        return []


def _last_settings(items: list[str]) -> dict[str, str]:
    """Leaf key -> raw value of the override that decides it (none later sets it, its section or below)."""
    decided: dict[str, str] = {}
    for item in items:
        key, _, raw = item.partition("=")
        key = key.strip()
        for other in list(decided):
            if other == key or other.startswith(key + ".") or key.startswith(other + "."):
                del decided[other]
        decided[key] = raw
    return {k: v for k, v in decided.items() if k in LEAVES and k != "spark.conf"}


def check_outcome(path: Path | None, items: list[str]) -> Config | None:
    """Load; on success the config must be frozen, valid and hold the overrides; on failure one
    ConfigError line naming a key that was given (or the file and line, or the ``--set`` string)."""
    keys = file_keys(path.read_bytes()) if path is not None else []
    keys += [item.partition("=")[0].strip() for item in items]
    try:
        cfg = load_config(path, items)
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        # Short: values are shortened (a --set string the user typed is echoed as it is).
        assert len(msg) - sum(len(repr(i)) for i in items) < 1000, msg[:300]
        match = _KEY_MESSAGE.match(msg)
        if match:
            assert _names_a_given_key(match.group("key"), keys), (msg, keys)
        elif msg.startswith("--set "):
            assert any(msg.startswith(f"--set {item!r}: ") for item in items), (msg, items)
        else:
            assert path is not None and msg.startswith(f"config file {path}: "), msg
            if "top level" not in msg:  # a syntax or encoding error: where in the file
                assert re.search(r"line \d+", msg), msg
        return None
    assert isinstance(cfg, Config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 1  # type: ignore[misc]
    data = to_dict(cfg)
    assert from_dict(data) == cfg  # what loaded is valid as it stands
    for key in LEAVES:
        value = _get(data, key)
        assert not (isinstance(value, float) and not math.isfinite(value)), (key, value)
    for key, raw in _last_settings(items).items():
        try:
            given = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, ValueError):  # not a YAML value: the text itself
            given = raw
        held = _get(data, key)
        assert held == given and type(held) in (type(given), float), (key, raw, held)
    return cfg


# --------------------------------------------------------------------------- tests


@bounded(80)
@given(doc=yaml_documents())
@example(doc=b"train:\n  epochs: 1" + b"0" * 5000 + b"\n")  # found: ValueError escaped
@example(doc=b"train:\n  epochs: 2024-02-30\n")  # found: ValueError escaped
@example(doc=b"sequences:\n  min_rating: .nan\n")  # found: a NaN setting loaded
@example(doc=b"spark:\n  conf:\n    x: {a: 1}\n")  # found: a mapping became a property
@example(doc=b"train:\n  epochs: 3\n\xff\n")  # found: no line in the message
@example(doc=b'"a\\nb": 1\n')  # found: a two-line message
@example(doc=b"train:\n  epochs: 3\x00\n")  # found: a position, not a line
@example(doc=b"0x" + b"f" * 5000 + b": 1\n")  # found: ValueError escaped (printing the key)
def test_generated_yaml_loads_or_fails_naming_the_key(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conf.yaml"
        path.write_bytes(doc)
        check_outcome(path, [])


@bounded(80)
@given(sets=overrides())
@example(sets=["train.epochs=1" + "0" * 5000])  # found: ValueError escaped
@example(sets=["score.popularity_penalty=-1"])  # found: the key with a type tag
@example(sets=["train.lr=.inf"])  # found: an infinite setting loaded
@example(sets=["train.epochs=&a [*a]", "train.epochs=4"])
@example(sets=["delta.engine=0x" + "f" * 5000])  # found: ValueError escaped (printing the value)
def test_generated_overrides_load_or_fail_naming_the_key(sets):
    check_outcome(None, sets)


@bounded(30)
@given(doc=yaml_documents(), sets=overrides())
def test_generated_file_and_overrides_together(doc, sets):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conf.yaml"
        path.write_bytes(doc)
        check_outcome(path, sets)


# The seed corpus: (file, the start of the message, or None: it loads).
SEEDS = {
    "good.yaml": None,
    "good_unicode_bom.yaml": None,
    "bad_syntax.yaml": "not valid YAML",
    "bad_top_level_list.yaml": "top level must be a mapping",
    "bad_unknown_key.yaml": "config key train.learning_rate: unknown",
    "bad_type.yaml": "config key train.epochs: expected an integer",
    "bad_section_is_value.yaml": "config key sequences.segments: expected a section",
    "bad_value_is_section.yaml": "config key train.epochs: expected an integer",
    "bad_range.yaml": "config key score.top_k: must be <= 1000",
    "bad_huge_int.yaml": "not valid YAML: cannot read the value",
    "bad_nan.yaml": "config key sequences.min_rating: expected a finite number, got nan",
    "bad_spark_conf_nested.yaml": "config key spark.conf.spark.sql.x: expected a string",
    "bad_alias_loop.yaml": "config key train.epochs: expected an integer",
    "bad_utf8.yaml": "not valid UTF-8",
    "bad_two_documents.yaml": "not valid YAML",
    "bad_python_tag.yaml": "not valid YAML",
    "bad_union.yaml": "config key score.popularity_penalty: must be >= 0",
}


def test_seed_corpus_is_complete():
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(SEEDS)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_corpus(name):
    path = CORPUS / name
    expected = SEEDS[name]
    cfg = check_outcome(path, [])
    if expected is None:
        assert cfg is not None
        return
    assert cfg is None
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value)
    if "valid" in expected:
        assert str(info.value).startswith(f"config file {path}: ") and re.search(r"line \d+", str(info.value))


CLI_CASES = [
    (["--conf", str(CORPUS / "bad_syntax.yaml")], "bad_syntax.yaml: not valid YAML"),
    (["--conf", str(CORPUS / "bad_huge_int.yaml")], "bad_huge_int.yaml: not valid YAML: cannot read the value"),
    (["--set", "score.popularity_penalty=-1"], "config key score.popularity_penalty: must be >= 0"),
    (["--set", "spark.conf={x: [1]}"], "config key spark.conf.x: expected a string"),
    (["--set", "train.epochs=" + "9" * 4500], "config key train.epochs"),
]


@pytest.mark.parametrize("args, expected", CLI_CASES, ids=[c[1] for c in CLI_CASES])
def test_cli_bad_settings_exit_2_with_one_line_before_spark(args, expected, tmp_path, monkeypatch):
    from longtail.cli import main

    # Spark must never start for a bad setting: make starting it fail loudly (every session, the
    # CLI's `spark_for_job` and `build_spark` alike, is built by `_build`).
    monkeypatch.setattr("longtail.core.session._build", _no_spark)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main([*args, "ingest", "--format", "files", "--interactions", str(tmp_path / "x.csv"),
                       "--set", f"warehouse={tmp_path / 'wh'}"])
    lines = err.getvalue().strip().splitlines()
    assert status == 2, err.getvalue()
    assert len(lines) == 1 and lines[0].startswith("longtail ingest: error: ") and expected in lines[0], lines
    assert "Traceback" not in err.getvalue()
    assert not (tmp_path / "wh").exists()


def _no_spark(*args, **kwargs):
    raise AssertionError("Spark started for a bad setting")


def test_the_generated_keys_cover_every_section():
    # The key space comes from the Config classes: a new section is fuzzed without a change here.
    assert {k.split(".")[0] for k in LEAVES} == {f.name for f in dataclasses.fields(Config)}
    assert "score.hybrid.mmr_lambda" in LEAVES and "sequences.segments" in SECTIONS
