"""The config schema is complete, self-consistent and accepts hb's own example configs.

`schemas/hb_compile.schema.json` is the one source of keys, enums, defaults and docs, so these
tests hold it to the reference (`docs/reference/hb_compile_config.md`, §4–§9, §18) and to
the conventions the loader, the language server and `docs/gen_config_doc.py` rely on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "schemas" / "hb_compile.schema.json"
REFERENCE_CONFIGS = sorted((REPO / "tests" / "data" / "configs" / "reference").glob("*.yaml"))
REFERENCE_MD = REPO / "docs" / "reference" / "hb_compile_config.md"  # the team's reference, kept in the repo
DOC_GENERATOR = REPO / "docs" / "gen_config_doc.py"

SECTIONS = ("model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters", "custom_op")

# Every key of the reference's tables §4–§8 (checked against the markdown when it is present).
REFERENCE_KEYS = {
    "model_parameters": {
        "onnx_model", "caffe_model", "prototxt", "march", "working_dir", "output_model_file_prefix",
        "layer_out_dump", "output_nodes", "remove_node_type", "remove_node_name", "debug_mode", "node_info",
        "set_node_data_type", "log_level", "enable_vpu", "enable_spu"},
    "input_parameters": {
        "input_name", "input_type_train", "input_layout_train", "input_type_rt", "input_layout_rt",
        "input_space_and_range", "input_shape", "input_batch", "norm_type", "mean_value", "scale_value",
        "std_value", "separate_batch", "separate_name"},
    "calibration_parameters": {
        "cal_data_dir", "cal_data_type", "preprocess_on", "calibration_type", "max_percentile", "per_channel",
        "run_on_cpu", "run_on_bpu", "optimization", "enable_int16", "quant_config"},
    "compiler_parameters": {
        "compile_mode", "balance_factor", "debug", "core_num", "optimize_level", "input_source",
        "max_time_per_fc", "jobs", "advice", "ability_entry", "cache_mode", "cache_path", "max_l2m_size",
        "extra_params", "hbdk3_compatible_mode"},
    "custom_op": {"custom_op_method", "op_register_files", "custom_op_dir"},
}

# Keys of this project's own (x-hb-generation "hbcompile"): not in the reference, documented here.
HBCOMPILE_KEYS = {
    "calibration_parameters": {"target_output_cosine", "mixed_precision_budget", "sensitivity", "accuracy_samples",
                               "check_calibration_data"},
}

# The list conventions of the brief the loader splits by (reference §3).
PER_INPUT = {"input_name", "input_type_rt", "input_type_train", "input_layout_train", "input_layout_rt",
             "input_space_and_range", "input_shape", "norm_type", "mean_value", "scale_value", "std_value",
             "cal_data_dir", "cal_data_type"}
NAME_LISTS = {"run_on_cpu", "run_on_bpu", "output_nodes", "remove_node_type", "remove_node_name",
              "separate_name", "op_register_files"}

MARCHES = ["bernoulli2", "bayes", "bayes-e", "nash-b-lite", "nash-b", "nash-b-plus", "nash-e", "nash-m", "nash-p",
           "nash-starry-p", "nash-h"]
JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema) -> Draft202012Validator:
    return Draft202012Validator(schema)


def all_keys(schema: dict[str, Any]):
    for section, sec in schema["properties"].items():
        for key, ks in sec["properties"].items():
            yield section, key, ks


def drop_empty(data: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """What the loader does before validating: hb templates leave keys `''` or blank = unset."""
    out: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict):
            out[section] = {} if body is None else body
            continue
        props = schema["properties"].get(section, {}).get("properties", {})
        kept = {}
        for key, value in body.items():
            blank = value is None or (isinstance(value, str) and not value.strip())
            if blank and not (value == "" and props.get(key, {}).get("x-hb-nonempty")):
                continue
            kept[key] = value
        out[section] = kept
    return out


def load_reference(path: Path, schema: dict[str, Any]) -> dict[str, Any]:
    return drop_empty(yaml.safe_load(path.read_text(encoding="utf-8")), schema)


def errors_of(validator: Draft202012Validator, data: dict[str, Any]) -> list[ValidationError]:
    return list(validator.iter_errors(data))


def minimal() -> dict[str, Any]:
    return {"model_parameters": {"onnx_model": "m.onnx", "march": "nash-e"},
            "input_parameters": {"input_type_train": "rgb", "input_type_rt": "nv12", "input_layout_train": "NCHW"}}


def with_key(section: str, key: str, value: Any) -> dict[str, Any]:
    data = minimal()
    data.setdefault(section, {})[key] = value
    return data


def walk(node: Any, path: tuple = ()):
    """Every (path, subschema dict) in the schema, annotations included."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


# ---------------------------------------------------------------- the schema itself

def test_schema_is_valid_draft_2020_12(schema):
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://hbcompile.dev/schemas/hb_compile.schema.json"
    assert schema["title"] and schema["description"]


def test_root_and_sections_are_closed_objects(schema):
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["model_parameters", "input_parameters"]
    assert tuple(schema["properties"]) == SECTIONS
    for section, sec in schema["properties"].items():
        assert sec["type"] == "object" and sec["additionalProperties"] is False, section
        assert sec["description"], section


def test_schema_loads_through_the_package_path(schema):
    from schemas import schema_path

    assert json.loads(schema_path().read_text(encoding="utf-8")) == schema


@pytest.mark.parametrize("section", SECTIONS)
def test_every_reference_key_is_present(schema, section):
    assert set(schema["properties"][section]["properties"]) == REFERENCE_KEYS[section] | HBCOMPILE_KEYS.get(section,
                                                                                                          set())


def test_only_hbcompile_keys_extend_the_reference(schema):
    for section, key, ks in all_keys(schema):
        assert (ks["x-hb-generation"] == "hbcompile") == (key in HBCOMPILE_KEYS.get(section, set())), key


def test_hard_coded_key_list_matches_the_reference_tables():
    """Parse §4–§8's tables: the first cell of each row names one or more keys in backticks."""
    text = REFERENCE_MD.read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    section = None
    for line in text.splitlines():
        heading = re.match(r"^## (\d+)\. `(\w+)`", line)
        if line.startswith("## "):
            section = heading.group(2) if heading and 4 <= int(heading.group(1)) <= 8 else None
            continue
        if section and line.startswith("| `"):
            first_cell = line.split("|")[1]
            found.setdefault(section, set()).update(re.findall(r"`(\w+)`", first_cell))
    assert found == REFERENCE_KEYS


def test_every_key_has_type_description_and_generation(schema):
    for section, key, ks in all_keys(schema):
        where = f"{section}.{key}"
        types = ks["type"] if isinstance(ks["type"], list) else [ks["type"]]
        assert types and set(types) <= JSON_TYPES and "null" not in types, where
        assert isinstance(ks["description"], str) and len(ks["description"]) > 30, where
        assert ks["x-hb-generation"] in ("hb_mapper", "hb_compile", "both", "hbcompile"), where


def test_list_conventions(schema):
    kinds = {key: ks.get("x-hb-list") for _, key, ks in all_keys(schema)}
    assert {k for k, v in kinds.items() if v == "per-input"} == PER_INPUT
    assert {k for k, v in kinds.items() if v == "names"} == NAME_LISTS
    assert {k for k, v in kinds.items() if v == "comma"} == {"optimization"}


def test_types_where_yaml_allows_several(schema):
    props = {key: ks for _, key, ks in all_keys(schema)}
    assert props["scale_value"]["type"] == ["string", "number"]
    assert props["mean_value"]["type"] == ["string", "number"]
    assert props["input_batch"]["type"] == ["integer", "string"]
    assert props["node_info"]["type"] == ["string", "object"]
    assert props["quant_config"]["type"] == ["object", "string"]


def test_every_enum_value_has_a_description(schema):
    """Enums and item enums anywhere (node_info's ON, input_source values, …) are documented."""
    checked = 0
    for path, node in walk(schema):
        if path and path[-1] in ("x-hb-enum-descriptions", "x-hb-marches", "x-hb-train-rt-pairs", "x-hb-rt-layout"):
            continue
        if "if" in path:  # conditions of cross-key rules restate values, they do not define them
            continue
        values = [*node.get("enum", []), *node.get("x-hb-item-enum", []), *node.get("x-hb-item-enum-hidden", [])]
        if not values or not isinstance(node.get("enum", []), list):
            continue
        meanings = node.get("x-hb-enum-descriptions", {})
        missing = [v for v in values if not meanings.get(v)]
        assert not missing, f"{'.'.join(map(str, path))}: no description for {missing}"
        assert set(meanings) <= set(values), f"{'.'.join(map(str, path))}: describes unknown values"
        checked += len(values)
    assert checked > 80


def test_public_and_hidden_enum_values(schema):
    ip = schema["properties"]["input_parameters"]["properties"]
    assert ip["input_type_rt"]["x-hb-item-enum"] == ["nv12", "yuv444", "rgb", "bgr", "gray", "featuremap"]
    assert set(ip["input_type_train"]["x-hb-item-enum"]) == {"rgb", "bgr", "featuremap", "gray", "yuv444"}
    for key in ("input_type_rt", "input_type_train"):
        assert ip[key]["x-hb-item-enum-hidden"] == ["yuv444_128", "yuv_bt601_full", "yuv_bt601_video"]
    assert ip["input_space_and_range"]["x-hb-item-enum"] == ["regular", "bt601_video"]
    mp = schema["properties"]["model_parameters"]["properties"]
    assert mp["march"]["enum"] == MARCHES
    assert mp["remove_node_type"]["x-hb-item-enum"] + mp["remove_node_type"]["x-hb-item-enum-hidden"] == [
        "Quantize", "Transpose", "Dequantize", "Cast", "Reshape", "Softmax", "DequantizeFilter"]
    cp = schema["properties"]["calibration_parameters"]["properties"]
    assert cp["calibration_type"]["enum"] == ["default", "mix", "kl", "max", "load", "skip"]
    assert set(cp["cal_data_type"]["x-hb-item-enum"] + cp["cal_data_type"]["x-hb-item-enum-hidden"]) == {
        "uint8", "float32", "int32", "int16", "int8"}


def test_defaults_are_valid_values_of_their_key(schema):
    defaults = {}
    for section, key, ks in all_keys(schema):
        if "default" in ks:
            Draft202012Validator(ks).validate(ks["default"])
            defaults[f"{section}.{key}"] = ks["default"]
    # hb_compile's defaults where the generations differ (reference §7, §14).
    assert defaults["compiler_parameters.optimize_level"] == "O2"
    assert defaults["compiler_parameters.jobs"] == 16
    assert defaults["compiler_parameters.debug"] is True
    assert defaults["model_parameters.output_model_file_prefix"] == "model"
    assert defaults["calibration_parameters.max_percentile"] == 1.0


def test_patterns_compile_and_mean_what_they_say(schema):
    for _path, node in walk(schema):
        for k in ("pattern", "x-hb-item-pattern"):
            if isinstance(node.get(k), str):
                re.compile(node[k])
    ip = schema["properties"]["input_parameters"]["properties"]
    shape, item_shape = ip["input_shape"]["pattern"], ip["input_shape"]["x-hb-item-pattern"]
    assert item_shape == r"^\d+(x\d+)*$"
    for good in ("1x3x224x224", "1x3x224x224; 1x10", "1x3x640x640;", "None; 1x4"):
        assert re.search(shape, good), good
    for bad in ("1X3X224X224", "1,3,224,224", "1x3x", "x3"):
        assert not re.search(shape, bad), bad
    numbers = ip["mean_value"]["pattern"]
    for good in ("123.675 116.28 103.53", "103.94 116.78 123.68; None", "1,2,3,", "-1e-3 .5", "128"):
        assert re.search(numbers, good), good
    for bad in ("abc", "1 2 x", "1..2"):
        assert not re.search(numbers, bad), bad


def test_list_patterns_do_not_backtrack_catastrophically(schema):
    """Editors run these regexes on every keystroke: hostile input must fail in linear-ish time.

    Measured without a wall clock: CPU time at 4n against n (linear ≈ 4×, quadratic ≈ 16×, catastrophic
    far more), the best of a few repeats so a busy machine cannot fake a superlinear ratio."""
    import time

    ip = schema["properties"]["input_parameters"]["properties"]
    units = ["; ", " ;", "1", "1 ", "1x"]

    def cpu(n: int) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for key in ("input_shape", "mean_value"):
                rx = re.compile(ip[key]["pattern"])
                for unit in units:
                    assert not rx.search(unit * n + "a")
            best = min(best, time.process_time() - start)
        return best

    small, large = cpu(1500), cpu(6000)
    assert large <= 10 * max(small, 2e-3), (small, large)


def test_annotations_use_known_vocabularies(schema):
    keys_by_path = {f"{s}.{k}" for s, k, _ in all_keys(schema)}
    for section, key, ks in all_keys(schema):
        where = f"{section}.{key}"
        assert ks.get("x-hb-path", "file") in ("file", "dir"), where
        if "x-hb-suffix" in ks:
            assert ks["x-hb-suffix"].startswith(".") and "x-hb-path" in ks, where
        assert ks.get("x-hb-model-values", "input_name") in ("input_name", "node_name", "op_type"), where
        if ks.get("deprecated"):
            assert "x-hb-replacement" in ks and ks["x-hb-deprecation"].startswith("Please note that the parameter"), where
            assert ks["x-hb-replacement"] is None or ks["x-hb-replacement"] in keys_by_path, where
        for other in ks.get("x-hb-required-unless", []):
            assert f"{section}.{other}" in keys_by_path, where
    mp = schema["properties"]["model_parameters"]["properties"]
    assert [mp[k]["x-hb-suffix"] for k in ("onnx_model", "caffe_model", "prototxt")] == [
        ".onnx", ".caffemodel", ".prototxt"]
    assert mp["output_model_file_prefix"]["x-hb-nonempty"] is True


def test_deprecations_use_hb_compile_wording(schema):
    deprecated = {key: ks for _, key, ks in all_keys(schema) if ks.get("deprecated")}
    assert set(deprecated) == {"set_node_data_type", "log_level", "input_layout_rt", "norm_type", "preprocess_on",
                               "hbdk3_compatible_mode"}
    assert deprecated["input_layout_rt"]["x-hb-deprecation"] == (
        "Please note that the parameter 'input_layout_rt' has been deprecated. Specifying this parameter will have "
        "no effect")
    assert deprecated["norm_type"]["x-hb-deprecation"] == (
        "Please note that the parameter norm_type has been deprecated and will be determined by the specification "
        "of the mean/scale/std parameters")
    assert deprecated["set_node_data_type"]["x-hb-replacement"] == "model_parameters.node_info"


def test_model_value_keys(schema):
    model_values = {key: ks["x-hb-model-values"] for _, key, ks in all_keys(schema) if "x-hb-model-values" in ks}
    assert model_values == {
        "input_name": "input_name", "separate_name": "input_name", "input_source": "input_name",
        "run_on_cpu": "node_name", "run_on_bpu": "node_name", "output_nodes": "node_name",
        "remove_node_name": "node_name", "node_info": "node_name"}


def test_marches_table(schema):
    marches = schema["x-hb-marches"]
    assert list(marches) == MARCHES
    for name, m in marches.items():
        assert set(m) == {"generation", "description", "core_num", "optimize_level", "input_batch",
                          "max_time_per_fc", "max_l2m_size_supported"}, name
        assert m["generation"] == ("hb_mapper" if name.startswith("b") else "hb_compile"), name
        assert m["core_num"][0] <= m["core_num"][1] and m["input_batch"][0] == 1, name
    assert marches["bernoulli2"]["core_num"] == [1, 2] and marches["bernoulli2"]["input_batch"] == [1, 128]
    assert marches["nash-e"]["optimize_level"] == ["O0", "O1", "O2"] and "RDK S100" in marches["nash-e"]["description"]
    assert marches["nash-h"]["core_num"] == [1, 4] and marches["nash-h"]["max_l2m_size_supported"]
    assert not marches["nash-m"]["max_l2m_size_supported"]
    assert marches["bayes-e"]["max_time_per_fc"] == [1000, 4294967295]
    assert marches["nash-p"]["max_time_per_fc"] == [1000, 10000000]
    levels = schema["properties"]["compiler_parameters"]["properties"]["optimize_level"]["enum"]
    assert all(set(m["optimize_level"]) <= set(levels) for m in marches.values())


def test_train_rt_pairs_and_rt_layouts(schema):
    ip = schema["properties"]["input_parameters"]["properties"]
    train = ip["input_type_train"]["x-hb-item-enum"] + ip["input_type_train"]["x-hb-item-enum-hidden"]
    rt = ip["input_type_rt"]["x-hb-item-enum"] + ip["input_type_rt"]["x-hb-item-enum-hidden"]
    pairs = schema["x-hb-train-rt-pairs"]
    assert set(pairs) == set(train)
    for t, rts in pairs.items():
        assert t in rts, f"same type is always legal: {t}"
        assert set(rts) <= set(rt) | {"yuv420sp_bt601_video"}, t
    assert {"nv12", "yuv444", "rgb", "bgr"} <= set(pairs["rgb"]) and "gray" not in pairs["rgb"]
    assert set(pairs["yuv444"]) >= {"nv12", "yuv444"} and pairs["featuremap"] == ["featuremap"]
    layouts = schema["x-hb-rt-layout"]
    assert set(rt) <= set(layouts)
    assert layouts["nv12"] is None and layouts["rgb"] == "NHWC" and layouts["gray"] == "NCHW"


# ---------------------------------------------------------------- configs against it

@pytest.mark.parametrize("path", REFERENCE_CONFIGS, ids=lambda p: p.stem)
def test_reference_configs_validate(schema, validator, path):
    data = load_reference(path, schema)
    assert [e.message for e in errors_of(validator, data)] == []


@pytest.mark.parametrize("path", REFERENCE_CONFIGS, ids=lambda p: p.stem)
def test_reference_config_list_items_are_known_values(schema, path):
    """The `;`-list annotations fit real configs: every item is an allowed (or hidden) value."""
    data = load_reference(path, schema)
    for section, body in data.items():
        for key, value in body.items():
            ks = schema["properties"][section]["properties"][key]
            allowed = ks.get("x-hb-item-enum", []) + ks.get("x-hb-item-enum-hidden", [])
            if not allowed:
                continue
            sep = "," if ks["x-hb-list"] == "comma" else ";"
            items = [i.strip() for i in str(value).split(sep) if i.strip() and i.strip() != "None"]
            assert items and all(i in allowed for i in items), f"{path.name}: {key}={value!r}"


def test_there_are_five_reference_configs():
    assert {p.stem for p in REFERENCE_CONFIGS} == {
        "x3_onnx_template", "x5_yolov8_detect_nv12", "s100_yoloe_nash_e", "s100_paddleocr_det",
        "hb_config_generator_full"}


def test_the_x3_template_keeps_its_empty_values(schema):
    raw = yaml.safe_load((REPO / "tests/data/configs/reference/x3_onnx_template.yaml").read_text())
    assert raw["input_parameters"]["mean_value"] is None and raw["calibration_parameters"]["cal_data_dir"] == ""
    dropped = load_reference(REPO / "tests/data/configs/reference/x3_onnx_template.yaml", schema)
    assert "mean_value" not in dropped["input_parameters"] and "cal_data_dir" not in dropped["calibration_parameters"]


def one_error(validator, data) -> ValidationError:
    errs = errors_of(validator, data)
    assert len(errs) == 1, [e.message for e in errs]
    return errs[0]


def test_unknown_key_is_rejected(validator):
    data = with_key("compiler_parameters", "optimise_level", "O2")
    err = one_error(validator, data)
    assert err.validator == "additionalProperties" and list(err.absolute_path) == ["compiler_parameters"]
    assert "optimise_level" in err.message


def test_unknown_section_is_rejected(validator):
    err = one_error(validator, {**minimal(), "compile_parameters": {}})
    assert err.validator == "additionalProperties" and list(err.absolute_path) == []


@pytest.mark.parametrize("section,key,value,expected", [
    ("model_parameters", "layer_out_dump", "yes", "boolean"),
    ("calibration_parameters", "per_channel", 1, "boolean"),
    ("compiler_parameters", "core_num", "2", "integer"),
    ("calibration_parameters", "max_percentile", "0.99", "number"),
    ("input_parameters", "input_shape", [1, 3, 224, 224], "string"),
    ("compiler_parameters", "input_source", "pyramid", "object"),
    ("input_parameters", "scale_value", True, ["string", "number"]),
])
def test_wrong_type_is_rejected(validator, section, key, value, expected):
    err = one_error(validator, with_key(section, key, value))
    assert err.validator == "type" and err.validator_value == expected
    assert list(err.absolute_path) == [section, key]


@pytest.mark.parametrize("section,key,value", [
    ("model_parameters", "march", "bernoulli3"),
    ("calibration_parameters", "calibration_type", "minmax"),
    ("compiler_parameters", "compile_mode", "fast"),
    ("compiler_parameters", "optimize_level", "O4"),
    ("model_parameters", "debug_mode", "dump"),
    ("compiler_parameters", "cache_mode", "on"),
    ("custom_op", "custom_op_method", "load"),
])
def test_bad_enum_is_rejected(validator, section, key, value):
    err = one_error(validator, with_key(section, key, value))
    assert err.validator == "enum" and value not in err.validator_value
    assert list(err.absolute_path) == [section, key]


@pytest.mark.parametrize("section,key,value,kind", [
    ("calibration_parameters", "max_percentile", 1.5, "maximum"),
    ("calibration_parameters", "max_percentile", -0.1, "minimum"),
    ("compiler_parameters", "max_l2m_size", 25165825, "maximum"),
    ("compiler_parameters", "core_num", 0, "minimum"),
    ("compiler_parameters", "jobs", 0, "minimum"),
    ("input_parameters", "input_shape", "1X3X224X224", "pattern"),
    ("input_parameters", "mean_value", "123 abc", "pattern"),
    ("input_parameters", "input_batch", "eight", "pattern"),
    ("model_parameters", "output_model_file_prefix", "", "minLength"),
])
def test_out_of_range_and_bad_format_are_rejected(validator, section, key, value, kind):
    err = one_error(validator, with_key(section, key, value))
    assert err.validator == kind and list(err.absolute_path) == [section, key]


def test_balance_needs_balance_factor(validator):
    data = minimal()
    data["compiler_parameters"] = {"compile_mode": "balance"}
    err = one_error(validator, data)
    assert err.validator == "required" and "balance_factor" in err.message and "then" in err.schema_path
    data["compiler_parameters"]["balance_factor"] = 50
    assert errors_of(validator, data) == []
    data["compiler_parameters"]["balance_factor"] = 101
    assert one_error(validator, data).validator == "maximum"


def test_cache_mode_enable_needs_cache_path(validator):
    data = minimal()
    data["compiler_parameters"] = {"cache_mode": "enable"}
    assert "cache_path" in one_error(validator, data).message
    data["compiler_parameters"] = {"cache_mode": "disable"}
    assert errors_of(validator, data) == []


def test_model_file_combinations(validator):
    both = with_key("model_parameters", "caffe_model", "m.caffemodel")
    both["model_parameters"]["prototxt"] = "m.prototxt"
    assert one_error(validator, both).validator == "not"
    caffe_only = minimal()
    caffe_only["model_parameters"] = {"march": "bayes", "caffe_model": "m.caffemodel"}
    err = one_error(validator, caffe_only)
    assert err.validator == "dependentRequired" and "prototxt" in err.message
    caffe_only["model_parameters"]["prototxt"] = "m.prototxt"
    assert errors_of(validator, caffe_only) == []


def test_required_keys(validator):
    err = one_error(validator, {"input_parameters": minimal()["input_parameters"]})
    assert err.validator == "required" and "model_parameters" in err.message
    data = minimal()
    del data["model_parameters"]["march"]
    err = one_error(validator, data)
    assert err.validator == "required" and list(err.absolute_path) == ["model_parameters"]


def test_layout_required_unless_every_input_is_featuremap(validator):
    data = minimal()
    del data["input_parameters"]["input_layout_train"]
    err = one_error(validator, data)
    assert err.validator == "required" and "input_layout_train" in err.message
    data["input_parameters"].update(input_type_train="featuremap; featuremap", input_type_rt="featuremap;featuremap")
    assert errors_of(validator, data) == []
    data["input_parameters"]["input_type_train"] = "featuremap; rgb"
    assert "input_layout_train" in one_error(validator, data).message


def test_node_info_forms(validator):
    ok = {"/model.10/m/m.0/attn/Softmax": {"ON": "BPU", "InputType": "int8", "OutputType": "int8"},
          "Conv_3": {"InputType1": "int16"}}
    assert errors_of(validator, with_key("model_parameters", "node_info", ok)) == []
    assert errors_of(validator, with_key("model_parameters", "node_info", "Conv_0:int16;Conv_1:int16")) == []
    err = one_error(validator, with_key("model_parameters", "node_info", {"Conv_0": {"OutputType0": "int16"}}))
    assert err.validator == "additionalProperties"
    err = one_error(validator, with_key("model_parameters", "node_info", {"Conv_0": {"ON": "GPU"}}))
    assert err.validator == "enum" and list(err.absolute_path)[-2:] == ["Conv_0", "ON"]
    err = one_error(validator, with_key("model_parameters", "node_info", {"Conv_0": {"OutputType": "int32"}}))
    assert err.validator == "enum"


def test_input_source_and_quant_config(validator):
    assert errors_of(validator, with_key("compiler_parameters", "input_source", {"images": "pyramid"})) == []
    err = one_error(validator, with_key("compiler_parameters", "input_source", {"images": "camera"}))
    assert err.validator == "enum" and list(err.absolute_path) == ["compiler_parameters", "input_source", "images"]
    qc = {"model_config": {"all_node_type": "int16"}, "node_config": {"Conv_0": {"qtype": "int8"}}}
    assert errors_of(validator, with_key("calibration_parameters", "quant_config", qc)) == []
    assert errors_of(validator, with_key("calibration_parameters", "quant_config", "./quant_config.json")) == []
    err = one_error(validator, with_key("calibration_parameters", "quant_config", {"model_cfg": {}}))
    assert err.validator == "additionalProperties"


def test_custom_op_section_needs_its_method(validator):
    data = {**minimal(), "custom_op": {"op_register_files": "sample_custom.py", "custom_op_dir": "./custom_op"}}
    err = one_error(validator, data)
    assert err.validator == "required" and "custom_op_method" in err.message
    data["custom_op"]["custom_op_method"] = "register"
    assert errors_of(validator, data) == []


# ---------------------------------------------------------------- generated docs

def test_config_doc_is_up_to_date():
    proc = subprocess.run([sys.executable, str(DOC_GENERATOR), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_config_doc_check_detects_a_stale_page(tmp_path):
    page = tmp_path / "config.md"
    page.write_text("# old\n", encoding="utf-8")
    stale = subprocess.run([sys.executable, str(DOC_GENERATOR), "--check", "--output", str(page)],
                           capture_output=True, text=True)
    assert stale.returncode == 1 and "stale" in stale.stderr
    subprocess.run([sys.executable, str(DOC_GENERATOR), "--output", str(page)], check=True, capture_output=True)
    fresh = subprocess.run([sys.executable, str(DOC_GENERATOR), "--check", "--output", str(page)])
    assert fresh.returncode == 0


def test_config_doc_covers_every_key_and_enum_meaning(schema):
    page = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    for _section, key, ks in all_keys(schema):
        assert f"### `{key}`" in page, key
        for value, meaning in ks.get("x-hb-enum-descriptions", {}).items():
            assert f"`{value}`: {meaning}".replace("|", "\\|") in page, (key, value)
        if ks.get("deprecated"):
            assert ks["x-hb-deprecation"] in page, key
    for march in MARCHES:
        assert f"| `{march}` |" in page
