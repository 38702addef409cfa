"""A real key written in the wrong section (review s7 R-L 6): `optimize_level` under model_parameters was told
"did you mean 'log_level'?" with a quick fix renaming it there (the O1 setting lost), `march` under
calibration_parameters got a list of 16 allowed keys. Now the message says where the key belongs and offers no
rename; a typo closer to another section's key names that key and its section."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config_text

DIGITS = Path(__file__).resolve().parents[3] / "examples" / "digits"
TEXT = (DIGITS / "digits.hb.yaml").read_text()


@pytest.mark.parametrize(("anchor", "added", "message"), [
    ("  march: nash-e\n", "  optimize_level: O1\n",
     "Wrong key 'optimize_level' in model_parameters: it belongs in compiler_parameters"),
    ("  cal_data_type: uint8\n", "  march: nash-e\n",
     "Wrong key 'march' in calibration_parameters: it belongs in model_parameters"),
    ("  march: nash-e\n", "  optimise_level: O1\n",
     "Wrong key 'optimise_level' in model_parameters, did you mean 'optimize_level' (a key of compiler_parameters)?"),
])
def test_a_key_of_another_section_is_told_where_it_belongs(anchor, added, message):
    result = load_config_text(TEXT.replace(anchor, anchor + added, 1), DIGITS)
    [p] = [p for p in result.problems if p.code == "unknown-key"]
    assert p.message == message
    assert p.data["did_you_mean"] is None and not p.fixes  # no rename to a look-alike of this section


def test_a_typo_of_this_sections_key_still_gets_its_rename():
    result = load_config_text(TEXT.replace("  march: nash-e\n", "  marhc: nash-e\n", 1), DIGITS)
    [p] = [p for p in result.problems if p.code == "unknown-key"]
    assert p.data["did_you_mean"] == "march" and "did you mean 'march'?" in p.message


def test_a_file_given_for_a_folder_is_told_as_a_file(tmp_path):
    """R-L review s7: cal_data_dir naming a sample file said 'does not exist'; working_dir naming a file was
    only found out when the run wanted to write, after calibrating."""
    import shutil

    shutil.copytree(DIGITS, tmp_path / "d", ignore=shutil.ignore_patterns("model_output", "*.py", "*.npz"))
    (tmp_path / "d" / "out.txt").write_text("not a folder")
    text = TEXT.replace("cal_data_dir: ./calibration_data", "cal_data_dir: ./calibration_data/digit_000.gray")
    text = text.replace("working_dir: model_output", "working_dir: out.txt")
    problems = {p.code: p.message for p in load_config_text(text, tmp_path / "d").problems if p.is_error}
    assert problems["cal-dir-missing"].startswith("Cal_data_dir ./calibration_data/digit_000.gray is a file, expected "
                                                  "the folder of calibration samples")
    assert problems["working-dir-file"] == "Cannot write into working_dir out.txt: it is a file, expected a folder " \
                                           "(made when missing) for the outputs"
