"""Spool file names: derived from UIDs, safe as paths, never shared by two different objects."""

from __future__ import annotations

from storage.spool import FileStore, instance_relpath


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
