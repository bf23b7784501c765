"""Where a run's result objects are written: inside the results store, whatever the study UID."""

from __future__ import annotations

from node.build import BuildOptions, ResultJob, write_results
from node.config import Settings
from storage.spool import FileStore
from support.work_items import work_item


def test_results_of_a_path_like_study_uid_are_written_inside_the_results_store(
    tmp_path, sources, read_source, make_result, untrained
):
    # The SCP refuses such a UID; a row recorded before it did must still not write elsewhere.
    results = FileStore(tmp_path / "data" / "results")
    item = work_item("../../escaped")
    job = ResultJob(
        item, BuildOptions.of(Settings(outputs=("SR",))), results, untrained, reads_text=False
    )
    (built,) = write_results(job, [make_result(read_source(sources.rsna))])
    assert results.path(built.relpath).resolve().is_relative_to(results.root.resolve())
    assert list(tmp_path.rglob("escaped*")) == []
    assert [p.name for p in tmp_path.rglob("*.dcm")] == [f"SR-{built.sop_uid}.dcm"]
