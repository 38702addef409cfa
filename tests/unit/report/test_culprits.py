"""The ranked culprits users read: built from calibrate's real ranking and mixed-precision moves,
as the log table, the rich table and quant_info.json (whose hb_compile layout must stay valid)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from rich.console import Console

from engine.accuracy.mixed import mixed_precision
from engine.accuracy.sensitivity import analyse
from engine.report import tables
from engine.report.culprits import QUANT_INFO_KEY, Culprits, load_culprits
from tests.unit.accuracy.acc_models import calibrate, outlier_chain, samples
from tests.unit.report.sens_support import BROKEN, compiled_chain


@pytest.fixture(scope="module")
def ranked():
    """The analysis and the mixed precision calibrate runs, on the outlier chain."""
    model = outlier_chain()
    data = samples(model, 4)
    merged, calibration, plan = calibrate(model, data)
    sens = analyse(model, plan, data[:1], merged)
    mp = mixed_precision(model, calibration, data, merged, target=0.999, budget=2, sensitivity=sens)
    return sens, mp


def test_broken_node_is_first_and_marked_moved(ranked):
    sens, mp = ranked
    culprits = Culprits.from_sensitivity(sens, {"mixed_precision": mp.to_json()})
    first = culprits.rows[0]
    assert (first.rank, first.node, first.moved, first.culprit) == (1, BROKEN, "int16", "activation")
    assert first.isolated == pytest.approx(first.activation + first.weight)
    assert [r.node for r in culprits.moved] == [BROKEN]  # nothing else needed moving
    assert culprits.mixed_cosine >= 0.999 > 0.7 > culprits.mixed_before
    assert "mixed precision, on its evaluation samples: 0." in culprits.title()
    assert culprits.covers(len(culprits.rows)) and [r.rank for r in culprits.rows] == list(range(1, 6))
    lines = culprits.table_text(2).splitlines()
    assert lines[1].split() == ["Rank", "Node", "NodeType", "Isolated", "Loss", "Weight-only", "Loss",
                                "Activation-only", "Loss", "Accumulated", "Loss", "Mixed", "Precision"]
    assert lines[3].split()[:3] == ["1", BROKEN, "Conv+Relu"] and lines[3].split()[-1] == "int16"
    assert len(lines) == 5  # the top two only
    without = Culprits.from_sensitivity(sens)
    assert without.rows[0].moved is None and without.mixed_cosine is None and without.mixed_before is None
    assert "mixed precision" not in without.title()


def test_rich_table_and_screened_rows(ranked):
    sens, _ = ranked
    console = Console(record=True, width=200, color_system=None)
    Culprits.from_sensitivity(sens).print_rich(3, console)
    text = console.export_text()
    assert "Sensitivity: the top 3 of 5" in text and text.index(BROKEN) < text.index("conv_c+relu_c")
    data = sens.to_json()
    data["measured"] = 1  # as if screened by local noise: only the top row was run
    for row in data["ranking"][1:]:
        row["activation"] = row["weight"] = None
    screened = Culprits.from_json(data)
    assert screened.covers(1) and not screened.covers(2)
    assert screened.rows[1].isolated is None and "--" in screened.table_text(2).splitlines()[4]


def test_load_culprits_reads_a_calibrate_folder(tmp_path, ranked):
    sens, mp = ranked
    assert load_culprits(tmp_path) is None  # calibrate ranked nothing
    (tmp_path / "sensitivity.json").write_text(json.dumps(sens.to_json()))
    assert load_culprits(tmp_path).rows[0].moved is None
    (tmp_path / "accuracy.json").write_text(json.dumps({"mixed_precision": mp.to_json()}))
    assert load_culprits(tmp_path).rows[0].moved == "int16"


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    return compiled_chain(tmp_path_factory.mktemp("chain"))


def test_quant_info_carries_the_ranking_and_keeps_hb_layout(chain_run):
    report, _, entry = chain_run
    culprits = load_culprits(entry)
    nodes = [SimpleNamespace(**r) for r in report.results["report"]["nodes"]]
    outputs = [SimpleNamespace(**o) for o in report.results["report"]["outputs"]]
    node_io = {"conv_a": (["x", "Wa", "Ba"], ["a"]), "relu_b": (["b"], ["rb"])}
    plain = tables.quant_info(nodes, outputs, node_io)
    info = tables.quant_info(nodes, outputs, node_io, None, culprits)
    ranking = info[QUANT_INFO_KEY]["ranking"]
    assert ranking[0]["node"] == BROKEN and ranking[0]["rank"] == 1 and ranking[0]["mixed_precision"] == "int16"
    assert ranking[0]["isolated_loss"] > 0.3 > ranking[1]["isolated_loss"]
    assert info[QUANT_INFO_KEY]["output_cosine"] < 0.7 and info[QUANT_INFO_KEY]["mixed_precision_cosine"] >= 0.999
    assert info[QUANT_INFO_KEY]["mixed_precision_before"] < 0.7
    assert info[BROKEN]["sensitivity"]["rank"] == 1 and info["conv_c+relu_c"]["sensitivity"]["rank"] == 2
    # reference §12.3: node entries keep type / inputs / outputs / thresholds / cosine_similarity, the
    # output key is unchanged, and without a ranking nothing is added
    for name in plain:
        if name != "model_output_tensor":
            assert {"type", "inputs", "outputs", "thresholds", "cosine_similarity"} <= set(info[name])
            assert {k: v for k, v in info[name].items() if k != "sensitivity"} == plain[name]
    assert info["model_output_tensor"] == plain["model_output_tensor"]
    assert set(info) - set(plain) == {QUANT_INFO_KEY} and QUANT_INFO_KEY not in plain
    assert json.loads(json.dumps(info)) == info
