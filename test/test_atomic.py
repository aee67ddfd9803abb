"""visloc_core.atomic.replace_folder, which every writer (dataset, bag, APR artifact, relpose map)
uses to swap its finished temporary folder in. Reference: the folder contents before and after."""

from __future__ import annotations

import os

import pytest

from visloc_core.atomic import replace_folder


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_new_folder_is_renamed_into_place(tmp_path):
    built = tmp_path / ".out.partial"
    (built / "sub").mkdir(parents=True)
    (built / "sub" / "a.txt").write_text("new")
    assert replace_folder(built, tmp_path / "out") == tmp_path / "out"
    assert _tree(tmp_path / "out") == {"sub/a.txt": "new"}
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing left beside it


def test_existing_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old_only.txt").write_text("old")
    (out / "both.txt").write_text("old")
    built = tmp_path / ".out.partial"
    built.mkdir()
    (built / "both.txt").write_text("new")
    replace_folder(built, out)
    assert _tree(out) == {"both.txt": "new"}  # no file of the old folder survives
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the old one was removed after the swap


def test_missing_built_folder_leaves_out_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        replace_folder(tmp_path / "never_built", out)
    assert _tree(out) == {"keep.txt": "old"}  # put back under its name
    assert sorted(os.listdir(tmp_path)) == ["out"]
