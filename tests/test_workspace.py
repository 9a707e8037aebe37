"""The pipeline's outputs for one family: a missing one is named with the command that makes it."""

import pytest

from cdc.errors import CdcError
from cdc.stages.workspace import family_inputs_or_exit, load_family_inputs


def test_family_inputs_name_the_missing_folder_before_loading_any(tmp_path):
    with pytest.raises(CdcError, match=r"anchors/church does not exist: run `dvc repro anchors@church` first"):
        load_family_inputs(tmp_path, "church")
    for folder in ("anchors/church", "models/world", "models/judge", "world/built"):
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(CdcError, match=r"nowhere does not exist \(erase stage outputs live in .*erase/church/\)"):
        load_family_inputs(tmp_path, "church", tmp_path / "nowhere")


def test_scripts_exit_with_the_one_line_message(tmp_path):
    with pytest.raises(SystemExit, match=r"anchors/fish does not exist: run `dvc repro anchors@fish` first"):
        family_inputs_or_exit(tmp_path, "fish")
