"""Spool file names: derived from UIDs, safe as paths, never shared by two different objects."""

from __future__ import annotations

import pytest

from storage.spool import FileStore, PathOutsideStore, instance_relpath, results_folder


def test_conformant_uids_name_their_files_as_they_are():
    assert instance_relpath("1.2.3", "1.2.3.4.abcdef012345") == "1.2.3/1.2.3.4.abcdef012345.dcm"
    sop = "1." + "2" * 62  # 64 characters, the longest a UID may be
    assert instance_relpath("1.2", f"{sop}.abcdef012345") == f"1.2/{sop}.abcdef012345.dcm"


def test_malformed_uids_cannot_escape_the_spool_or_collide(tmp_path):
    names = {
        instance_relpath("../../etc", "passwd"),
        instance_relpath("1.2", "1.2 3"),
        instance_relpath("1.2", "1.2_3"),
        instance_relpath("1.2", "1.2/3"),
        instance_relpath("1.2", "9" * 70 + ".aaaaaaaaaaaa"),
        instance_relpath("1.2", "9" * 70 + ".bbbbbbbbbbbb"),
        instance_relpath("", ""),
        instance_relpath("..", "."),
    }
    assert len(names) == 8
    store = FileStore(tmp_path / "spool")
    for name in names:
        assert name.count("/") == 1
        assert not any(part.startswith(".") for part in name.split("/")), name
        store.write(name, name.encode())
    for name in names:
        assert store.read(name) == name.encode()
        assert store.path(name).resolve().is_relative_to((tmp_path / "spool").resolve())


@pytest.mark.parametrize(
    "relpath", ["../outside.dcm", "a/../../outside.dcm", "/tmp/outside.dcm", "", "a\0b"]
)
def test_a_path_leading_outside_the_store_is_refused_by_every_operation(tmp_path, relpath):
    store = FileStore(tmp_path / "store")
    for operation in (
        lambda: store.write(relpath, b"x"),
        lambda: store.read(relpath),
        lambda: store.remove(relpath),
        lambda: store.path(relpath),
    ):
        with pytest.raises(PathOutsideStore):
            operation()
    assert list(tmp_path.rglob("outside.dcm")) == []


def test_a_symbolic_link_out_of_the_store_is_not_followed(tmp_path):
    store = FileStore(tmp_path / "store")
    (tmp_path / "elsewhere").mkdir()
    (store.root / "1.2.3").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathOutsideStore, match="leads outside"):
        store.write("1.2.3/run-1/SR-1.2.dcm", b"x")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_results_folder_of_a_path_like_study_uid_stays_in_the_store(tmp_path):
    store = FileStore(tmp_path / "results")
    for study_uid in ("../../x", "/abs/path", ".."):
        folder = results_folder(study_uid, 1)
        stored = store.write(f"{folder}/SR-1.2.dcm", b"x")
        assert store.path(stored.relpath).resolve().is_relative_to(store.root.resolve())
    assert results_folder("1.2.3", 2) == "1.2.3/run-2"
