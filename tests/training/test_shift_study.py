"""The shifted split taken apart by parameter group: `synthetic.SHIFT_GROUPS` / `shift=`, training/shift_study.py, and
`evaluate --shift`."""

import json
import re
from pathlib import Path

import pytest

from modeling_unimoe.training.evaluate import main as evaluate_main
from modeling_unimoe.training.shift_study import SHIFTABLE_TASKS, shift_study, study_rows, study_table
from modeling_unimoe.training.synthetic import (
    SHIFT_GROUPS,
    TASKS,
    load_split,
    make_example,
    shifted_ranges,
    write_split,
)
from modeling_unimoe.training.synthetic_media import SHIFTED, WIDE
from tests.helpers import TINY_CHECKPOINT, needs_tiny_checkpoint


def test_shift_groups_hold_every_shifted_parameter_once():
    """Each parameter SHIFTED draws other than WIDE is in one group (background with the grey and tint it picks
    between), and no group is the same in both."""
    keys = [key for group_keys, _ in SHIFT_GROUPS.values() for key in group_keys]
    assert len(keys) == len(set(keys))
    assert set(keys) == {key for key in SHIFTED if SHIFTED[key] != WIDE[key]} | {"background"}
    for group, (group_keys, _) in SHIFT_GROUPS.items():
        assert any(SHIFTED[key] != WIDE[key] for key in group_keys), group
    assert shifted_ranges() is SHIFTED and shifted_ranges(()) == WIDE
    assert shifted_ranges(("gap", "noise")) == {**WIDE, "gap": SHIFTED["gap"], "noise": SHIFTED["noise"]}


def _media(example) -> bytes:
    if "image" in example:
        return example["image"].tobytes()
    if "video" in example:
        return b"".join(frame.tobytes() for frame in example["video"])
    return example["audio"][0].tobytes() + str(example["audio"][1]).encode()


@pytest.mark.parametrize("group", list(SHIFT_GROUPS))
def test_a_shift_group_changes_the_media_of_its_tasks_only(group):
    """Shifted examples with one group shifted differ from the WIDE-only ones (`shift=()`) in the tasks the group names
    (some of 4: a grey shade only shows on a grey background) and in no other task; answers and questions stay."""
    changed = SHIFT_GROUPS[group][1]
    for task in TASKS[:-1]:  # text_add has no media
        differ = []
        for index in range(4):
            base = make_example(task, "shifted", index, shift=())
            shifted = make_example(task, "shifted", index, shift=(group,))
            assert (shifted["answer"], shifted["question"]) == (base["answer"], base["question"])
            differ.append(_media(shifted) != _media(base))
        assert any(differ) == (task in changed), (task, differ)


def test_shift_arguments_are_checked():
    with pytest.raises(
        ValueError, match=re.escape("shift=('gap',) applies to the shifted split only; got split='test'")
    ):
        make_example("sound_beeps", "test", 0, shift=("gap",))
    with pytest.raises(ValueError, match="Unknown shift group 'pitch'; expected one of 'canvas'"):
        write_split("unused", "shifted", 1, shift=("pitch",))
    with pytest.raises(TypeError, match="shift must be None or a tuple of SHIFT_GROUPS names"):
        shifted_ranges("gap")


def test_rows_frame_the_groups_that_change_the_tasks():
    rows = study_rows(("sound_pitch", "sound_beeps"))
    assert rows["none"] == ((), ("sound_beeps", "sound_pitch")) and rows["all"] == (
        None,
        ("sound_beeps", "sound_pitch"),
    )
    assert list(rows)[1:-1] == ["rates", "seconds", "beep", "gap", "beep_hz", "amplitude", "noise", "tone", "high_hz",
                                "low_hz"]  # fmt: skip
    assert rows["beep_hz"] == (("beep_hz",), ("sound_beeps",)) and rows["noise"][1] == ("sound_beeps", "sound_pitch")
    assert SHIFTABLE_TASKS == TASKS[:-1]
    pairs = study_rows(("sound_pitch", "speech_digit"), pairs=True)
    singles = ["rates", "seconds", "amplitude", "noise", "tone", "high_hz", "low_hz", "speed", "speech_gain",
               "speech_noise"]  # fmt: skip
    assert list(pairs)[: len(singles) + 1] == ["none", *singles] and list(pairs)[-1] == "all"
    # a pair is scored on the tasks both of its groups change, and pairs that share none are left out
    assert pairs["rates+seconds"] == (("rates", "seconds"), ("sound_pitch",))
    assert pairs["rates+speed"] == (("rates", "speed"), ("speech_digit",)) and "noise+speed" not in pairs
    assert len(pairs) == 2 + len(singles) + 21 + 6  # 7 groups change the tones (21 pairs), 4 the digits (6)
    with pytest.raises(ValueError, match=re.escape("of which ['text_add'] have none or are unknown")):
        study_rows(("image_color", "text_add"))
    with pytest.raises(ValueError, match=re.escape("A shift study scores tasks with media; got []")):
        study_rows(())


def test_table_shows_each_rows_change_from_none():
    def row(**accuracies):
        return {"per_task": {task: {"accuracy": value} for task, value in accuracies.items()}}

    rows = {"none": row(sound_beeps=0.5, sound_pitch=1.0), "beep_hz": row(sound_beeps=0.42),
            "all": row(sound_beeps=0.36, sound_pitch=0.88)}  # fmt: skip
    assert study_table(rows, ("sound_beeps", "sound_pitch")).splitlines() == [
        "| shifted | sound_beeps | sound_pitch |",
        "| --- | ---: | ---: |",
        "| none | 50 | 100 |",
        "| beep_hz | 42 (-8) |  |",
        "| all | 36 (-14) | 88 (-12) |",
    ]


@needs_tiny_checkpoint
def test_study_scores_each_rows_own_split(tmp_path):
    report = shift_study(TINY_CHECKPOINT, ("sound_pitch",), n_per_task=2, out=tmp_path, log=lambda *_: None)
    written = json.loads((tmp_path / "shift_study.json").read_text())
    assert written["rows"].keys() == report["rows"].keys() == study_rows(("sound_pitch",)).keys()
    for name, row in written["rows"].items():
        assert row["per_task"]["sound_pitch"]["n"] == 2, name
    # the high_hz row's sounds are the shifted examples with that group shifted alone
    record = load_split(tmp_path / "data" / "high_hz", "shifted")[0]
    example = make_example("sound_pitch", "shifted", 0, shift=("high_hz",))
    assert written["rows"]["high_hz"]["shift"] == ["high_hz"] and record["answer"] == example["answer"] == "high"
    reference = tmp_path / "reference"
    write_split(reference, "shifted", 1, tasks=["sound_pitch"], shift=("high_hz",))
    written_wave = (tmp_path / "data" / "high_hz" / "shifted" / "sound_pitch" / "00000.wav").read_bytes()
    assert written_wave == (reference / "shifted" / "sound_pitch" / "00000.wav").read_bytes()


@needs_tiny_checkpoint
def test_evaluate_shift_writes_the_partly_shifted_split(tmp_path):
    evaluate_main([str(TINY_CHECKPOINT), "--data", str(tmp_path / "data"), "--split", "shifted",
                   "--shift", "beep_hz", "gap", "--n-per-task", "1", "--out", str(tmp_path / "eval")])  # fmt: skip
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["per_task"]["sound_beeps"]["n"] == 1
    write_split(tmp_path / "reference", "shifted", 1, shift=("beep_hz", "gap"))
    for task in ("sound_beeps", "image_shape"):
        suffix = "wav" if task == "sound_beeps" else "png"
        path = Path("shifted") / task / f"00000.{suffix}"
        assert (tmp_path / "data" / path).read_bytes() == (tmp_path / "reference" / path).read_bytes()
