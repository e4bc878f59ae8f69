"""What the notebooks in ``notebooks/`` share: their parameters, their warehouse, their plots."""
from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any

from longtail.core import files
from longtail.core.config import Config, load_config
from longtail.core.session import build_spark
from longtail.core.tables import Warehouse

#: Notebook parameters: config file (default: the embedded ``conf/local.yaml``) and warehouse.
PARAMETERS = ("LONGTAIL_CONF", "LONGTAIL_WAREHOUSE")


def parameters(dbutils: Any = None, environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The notebook's parameters: Databricks widgets when ``dbutils`` is given, else ``environ``.

    On Databricks an empty widget is created for each missing parameter, so that it shows
    above the notebook. Empty values count as unset (None).
    """
    values: dict[str, str | None] = {}
    for name in PARAMETERS:
        if dbutils is not None:
            dbutils.widgets.text(name, "")
            value = dbutils.widgets.get(name)
        else:
            value = (environ or {}).get(name)
        values[name] = value or None
    return values


def open_warehouse(dbutils: Any = None, environ: Mapping[str, str] | None = None) -> tuple[Config, Warehouse]:
    """Config and warehouse (on the session the config describes) from the notebook's parameters.

    Raises:
        ConfigError: a bad config file or key (as ``load_config``).
    """
    values = parameters(dbutils, environ)
    warehouse = values["LONGTAIL_WAREHOUSE"]
    cfg = load_config(values["LONGTAIL_CONF"], [f"warehouse={warehouse}"] if warehouse else [])
    return cfg, Warehouse(build_spark(cfg.spark, delta_engine=cfg.delta.engine), cfg.warehouse, engine=cfg.delta.engine)


def plots_folder(wh: Warehouse) -> str:
    """Where the notebooks save their PNGs: ``<warehouse>/_reports/plots``."""
    return f"{wh.root}/_reports/plots"


def save_png(fig: Any, path: str, dpi: int = 110) -> str:
    """Save a matplotlib figure as PNG at ``path`` (a local path or object-store URI); returns ``path``."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    files.write_bytes(path, buffer.getvalue())
    return path
