"""The sweep array's stored state (OUT/slurm.json) and task results as types (launch/sweep_array.py)."""
import json

from featcache.launch import sweep_array
from featcache.launch.sweep_array import STATE, ArrayState, GroupResult


def test_state_file_round_trips_and_names_the_busy_cells(tmp_path, monkeypatch):
    stored = {"cluster": "slurm", "tasks": {"7_0": ["000", "001"], "7_1": ["002"]}, "submitted_by": "later version"}
    state = ArrayState.from_json(stored)
    assert state.to_json() == stored and state.extra == {"submitted_by": "later version"}
    sweep_array._save_state(str(tmp_path), ArrayState("slurm", {"7_0": ["000", "001"], "7_1": ["002"]}))
    assert json.loads((tmp_path / STATE).read_text()) == {"cluster": "slurm", "tasks": stored["tasks"]}
    assert (tmp_path / STATE).read_text() == json.dumps({"cluster": "slurm", "tasks": stored["tasks"]}, indent=1)
    monkeypatch.setattr(sweep_array, "squeue_states", lambda ids: {"7_1": "RUNNING"})
    assert sweep_array._busy_cells(str(tmp_path)) == {"002"}
    sweep_array._save_state(str(tmp_path), ArrayState("local", {"7_0": ["000"]}))
    assert sweep_array._busy_cells(str(tmp_path)) == set()  # a local array ended with its command
    (tmp_path / STATE).write_text("[1, 2]")
    assert sweep_array._busy_cells(str(tmp_path)) == set()  # not a state file: nothing is held


def test_group_result_round_trips():
    result = {"cells": ["000"], "trained": 1, "wall_s": 2.5}
    assert GroupResult.from_json(result).to_json() == result and GroupResult.from_json(result).trained == 1
