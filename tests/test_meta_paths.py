"""meta.json paths: InternVL's convention (relative to the working directory), the meta folder,
--data-root, and --path-map for absolute paths written on another machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_mmpr

from mpo.data.meta import read_meta
from mpo.data.mmpr import load_mmpr
from mpo.errors import UserError

ROW = {"image": "red.png", "question": "Colour?", "chosen": "red", "rejected": "blue"}


def _internvl_layout(base: Path) -> Path:
    """InternVL's layout: shell/data/meta.json whose paths are relative to the launch folder ``base``."""
    write_mmpr(base / "playground" / "data", [ROW], name="toy")  # images in playground/data/img
    meta = base / "shell" / "data" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(
        json.dumps(
            {
                "toy": {
                    "root": "playground/data/img/",
                    "annotation": "playground/data/toy.jsonl",
                    "repeat_time": 1,
                }
            }
        )
    )
    return meta


def test_internvl_shell_meta_resolves_against_the_working_directory(processor, tmp_path, monkeypatch):
    meta = _internvl_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    data, _ = load_mmpr(Path("shell/data/meta.json"), processor)
    assert Path(data[0]["image_paths"][0]).resolve() == (tmp_path / "playground/data/img/red.png").resolve()
    # launched elsewhere, the explicit --data-root says where the paths are relative to
    monkeypatch.chdir(meta.parent)
    with pytest.raises(UserError, match=r"subset 'toy': annotation: 'playground/data/toy.jsonl' is not at "):
        load_mmpr(meta, processor)
    data, _ = load_mmpr(meta, processor, data_root=tmp_path)
    assert Path(data[0]["image_paths"][0]) == tmp_path / "playground/data/img/red.png"


def test_precedence_data_root_then_meta_folder_then_working_directory(tmp_path, monkeypatch):
    # the same relative paths exist under the meta folder, under the working directory and under a data root
    for base in ("meta_side", "cwd_side", "root_side"):
        write_mmpr(tmp_path / base, [ROW])
    meta = tmp_path / "meta_side" / "meta.json"
    monkeypatch.chdir(tmp_path / "cwd_side")
    assert read_meta(meta)[0].annotation == tmp_path / "meta_side" / "toy.jsonl"  # meta folder wins over CWD
    (tmp_path / "meta_side" / "toy.jsonl").unlink()
    (subset,) = read_meta(meta)
    assert subset.annotation.resolve() == (tmp_path / "cwd_side" / "toy.jsonl").resolve()  # then the CWD
    (subset,) = read_meta(meta, data_root=tmp_path / "root_side")  # explicit: only there
    assert (
        subset.annotation == tmp_path / "root_side" / "toy.jsonl"
        and subset.root == tmp_path / "root_side" / "img"
    )
    with pytest.raises(UserError, match="data_root: no such folder"):
        read_meta(meta, data_root=tmp_path / "nowhere")


def test_cluster_paths_get_one_line_and_path_map_remaps_them(processor, tmp_path):
    local = tmp_path / "local"
    write_mmpr(local, [ROW])
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps({"toy": {"root": "/mnt/petrelfs/share/img", "annotation": str(local / "toy.jsonl")}})
    )
    with pytest.raises(UserError) as err:
        load_mmpr(meta, processor)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{meta}: subset 'toy': root: no such path /mnt/petrelfs/share/img")
    first_missing = next(p for p in reversed(Path("/mnt/petrelfs/share/img").parents) if not p.exists())
    assert f"--path-map {first_missing}=" in message
    data, _ = load_mmpr(meta, processor, path_map=[f"/mnt/petrelfs/share={local}"])
    assert data[0]["image_paths"] == [str(local / "img" / "red.png")]
    with pytest.raises(UserError, match="path_map: expected OLD=NEW"):
        load_mmpr(meta, processor, path_map=["/mnt/petrelfs/share"])
