"""The notebooks' shared helpers: parameters from widgets or the environment, PNGs saved as files."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from longtail.notebook import parameters, save_png  # noqa: E402


class FakeWidgets:
    def __init__(self, values):
        self.values, self.created = values, []

    def text(self, name, default):
        self.created.append(name)

    def get(self, name):
        return self.values.get(name, "")


class FakeDbutils:
    def __init__(self, values):
        self.widgets = FakeWidgets(values)


def test_widgets_win_on_databricks_and_empty_means_unset():
    dbutils = FakeDbutils({"LONGTAIL_WAREHOUSE": "/Volumes/main/lt"})
    got = parameters(dbutils, {"LONGTAIL_WAREHOUSE": "/ignored", "LONGTAIL_CONF": "/ignored.yaml"})
    assert got == {"LONGTAIL_CONF": None, "LONGTAIL_WAREHOUSE": "/Volumes/main/lt"}
    assert dbutils.widgets.created == ["LONGTAIL_CONF", "LONGTAIL_WAREHOUSE"]


def test_environment_without_dbutils():
    assert parameters(None, {"LONGTAIL_CONF": "c.yaml", "LONGTAIL_WAREHOUSE": ""}) == {
        "LONGTAIL_CONF": "c.yaml", "LONGTAIL_WAREHOUSE": None}
    assert parameters() == {"LONGTAIL_CONF": None, "LONGTAIL_WAREHOUSE": None}


def test_save_png_creates_folders_and_writes_a_png(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    path = save_png(fig, str(tmp_path / "a" / "b" / "plot.png"))
    plt.close(fig)
    data = (tmp_path / "a" / "b" / "plot.png").read_bytes()
    assert path.endswith("plot.png") and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["plot.png"]  # no temporary file left
