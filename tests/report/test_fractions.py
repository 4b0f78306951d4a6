"""Label-fraction curves and table from hand-written rows."""

from __future__ import annotations

import numpy as np
import pytest

from fedecho.report import fraction_table, plot_label_fraction_curves

FRACTIONS = (0.01, 0.1, 1.0)


def _rows() -> list[dict]:
    rows = []
    for arm, base in (("ssl", 0.7), ("random", 0.55)):
        for setting, cost in (("pooled", 0.0), ("federated", 0.02)):
            for k, fraction in enumerate(FRACTIONS):
                value = base + 0.1 * k - cost
                rows.append({"arm": arm, "setting": setting, "fraction": fraction, "metric": "auroc",
                             "value": value, "low": value - 0.05, "high": value + 0.05})
    rows.append({"arm": "ssl", "setting": "pooled", "fraction": 0.1, "metric": "balanced_accuracy", "value": 0.66,
                 "low": None, "high": None})
    return rows


def test_curves_draw_one_line_per_arm_and_setting_on_a_log_percent_axis():
    fig = plot_label_fraction_curves(_rows())
    auroc, bacc = fig.axes
    assert auroc.get_xscale() == "log" and auroc.get_xlim() == (0.8, 125)
    assert auroc.get_ylabel() == "auroc" and bacc.get_ylabel() == "balanced_accuracy"
    lines = {line.get_label(): line for line in auroc.get_lines()}
    assert set(lines) == {"SSL-pretrained, pooled", "SSL-pretrained, federated", "random init, pooled",
                          "random init, federated"}
    np.testing.assert_allclose(lines["SSL-pretrained, pooled"].get_xdata(), [1, 10, 100])
    np.testing.assert_allclose(lines["random init, federated"].get_ydata(), [0.53, 0.63, 0.73])
    assert lines["SSL-pretrained, federated"].get_linestyle() == "--"
    assert lines["SSL-pretrained, pooled"].get_color() != lines["random init, pooled"].get_color()
    # one confidence band per line; the lone balanced-accuracy point has no interval: no band
    assert len(auroc.collections) == 4 and len(bacc.collections) == 0
    band = auroc.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.65) and band[:, 1].max() == pytest.approx(0.95)
    assert [t.get_text() for t in auroc.get_legend().get_texts()] == list(lines)


def test_table_lists_value_and_interval_per_fraction_and_arm():
    lines = fraction_table(_rows())
    assert lines[0] == ("| metric | labelled | SSL-pretrained, pooled | SSL-pretrained, federated | "
                        "random init, pooled | random init, federated |")
    assert "| auroc | 1 % | 0.7 [0.65, 0.75] | 0.68 [0.63, 0.73] | 0.55 [0.5, 0.6] | 0.53 [0.48, 0.58] |" in lines
    assert "| auroc | 100 % | 0.9 [0.85, 0.95] | 0.88 [0.83, 0.93] | 0.75 [0.7, 0.8] | 0.73 [0.68, 0.78] |" in lines
    assert lines[-1] == "| balanced_accuracy | 10 % | 0.66 | n/a | n/a | n/a |"
    assert len(lines) == 2 + 4


def test_bad_rows_are_listed_in_one_error():
    rows = [{"arm": "", "setting": "pooled", "fraction": 10, "metric": "auroc", "value": 0.7},
            {"arm": "ssl", "setting": "pooled", "fraction": 0.5, "metric": "auroc"},
            {"arm": "ssl", "setting": "pooled", "fraction": 0.5, "metric": "auroc", "value": 0.7},
            {"arm": "ssl", "setting": "pooled", "fraction": 0.5, "metric": "auroc", "value": 0.71}]
    with pytest.raises(ValueError) as err:
        fraction_table(rows)
    text = str(err.value)
    assert "row 0: arm '' is not an encoder name" in text
    assert "row 0: fraction 10.0 must lie in (0, 1]" in text
    assert "row 1 lacks ['value']" in text and "row 3 repeats" in text
    with pytest.raises(ValueError, match="no label-fraction rows"):
        plot_label_fraction_curves([])


def test_several_pretraining_arms_get_their_own_colour_and_columns_with_random_last():
    rows = [{"arm": arm, "setting": "pooled", "fraction": f, "metric": "dice", "value": v + f / 10}
            for arm, v in (("random", 0.5), ("simclr", 0.7), ("dino", 0.6)) for f in (0.05, 1.0)]
    fig = plot_label_fraction_curves(rows)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines) == ["simclr-pretrained, pooled", "dino-pretrained, pooled", "random init, pooled"]
    assert len({line.get_color() for line in lines.values()}) == 3
    np.testing.assert_allclose(lines["dino-pretrained, pooled"].get_ydata(), [0.605, 0.7])
    table = fraction_table(rows)
    assert table[0] == "| metric | labelled | simclr-pretrained, pooled | dino-pretrained, pooled | random init, pooled |"
    assert table[-1] == "| dice | 100 % | 0.8 | 0.7 | 0.6 |"


def test_local_only_mean_is_a_dotted_line_and_a_column():
    rows = [r for r in _rows() if r["metric"] == "auroc" and r["arm"] == "ssl"]
    rows += [{"arm": "ssl", "setting": "local", "fraction": f, "metric": "auroc", "value": v, "low": v - 0.1,
              "high": v + 0.1} for f, v in ((0.01, 0.5), (1.0, 0.8))]
    fig = plot_label_fraction_curves(rows)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    local = lines["SSL-pretrained, local-only (site mean)"]
    assert local.get_linestyle() == ":" and local.get_color() == lines["SSL-pretrained, pooled"].get_color()
    np.testing.assert_allclose(local.get_xdata(), [1, 100])
    np.testing.assert_allclose(local.get_ydata(), [0.5, 0.8])
    table = fraction_table(rows)
    assert table[0] == ("| metric | labelled | SSL-pretrained, pooled | SSL-pretrained, federated | "
                        "SSL-pretrained, local-only (site mean) |")
    assert "| auroc | 10 % | 0.8 [0.75, 0.85] | 0.78 [0.73, 0.83] | n/a |" in table
    assert "| auroc | 100 % | 0.9 [0.85, 0.95] | 0.88 [0.83, 0.93] | 0.8 [0.7, 0.9] |" in table
