"""localize.runs: the append log survives a torn line, settings checks name the difference, shards are found."""

import json

import pytest

from localize.runs import (
    AppendLog,
    SettingsMismatchError,
    check_settings,
    read_jsonl,
    shard_files,
    shard_path,
)


def test_append_log_cuts_a_torn_line_and_writes_the_header_once(tmp_path):
    path = tmp_path / "log.jsonl"
    with AppendLog(path, header={"format": 1}) as log:
        log.write({"id": "a"}, {"id": "b"})
    path.write_bytes(path.read_bytes() + b'{"id": "c", "tor')  # killed mid-line
    assert [r.get("id") for r in read_jsonl(path)] == [None, "a", "b"]
    with AppendLog(path, header={"format": 1}) as log:
        log.write('{"id": "c"}')
    lines = path.read_text().splitlines()
    assert [json.loads(line).get("id") for line in lines] == [None, "a", "b", "c"]


def test_check_settings_lists_each_difference_nested():
    check_settings({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}}, "x")
    with pytest.raises(SettingsMismatchError, match=r"b\.c: 2 there vs 3 now") as err:
        check_settings({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}, "the sidecar s.jsonl")
    assert "a:" not in str(err.value) and "the sidecar s.jsonl" in str(err.value)


def test_shards_are_found(tmp_path):
    base = tmp_path / "rows.jsonl"
    for rank in range(2):
        with AppendLog(shard_path(base, rank, 2)) as log:
            log.write({"rank": rank})
    assert shard_path(base, 0, 1) == base
    assert [p.name for p in shard_files(base)] == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    assert [r["rank"] for f in shard_files(base) for r in read_jsonl(f)] == [0, 1]
