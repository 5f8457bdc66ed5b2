"""One photo's write as a Ray node runs it (``--ray-io``): a write sent again after its first try was lost
never leaves the caption short of where it belongs, and a node refuses a file it does not see as the
driver planned it. Plain processes and a real exiftool: the same code the node actors run."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from phototag.cluster_worker import PhotoIO
from phototag.config import MetadataSettings
from phototag.metadata import ExifToolSession
from phototag.photo_write import WriteJob, write_photo
from tests.conftest import CORPUS

PHOTO = "jpg/gps/DSCN0010.jpg"
CAPTION = "a stone bridge over a river"


def own_description(session: ExifToolSession, photo: Path) -> str | None:
    """The description the photo itself carries (its sidecar left out)."""
    from phototag.mwg import existing_metadata

    now = session.snapshot(photo)
    return existing_metadata(photo, now.file_tags, now.sidecar, None).description


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    target = tmp_path / "lib" / "bridge.jpg"
    target.parent.mkdir()
    shutil.copyfile(CORPUS / PHOTO, target)
    return target


def test_a_retry_in_mode_both_embeds_what_a_lost_first_try_left_in_the_sidecar_only(photo: Path) -> None:
    """Mode both writes the sidecar first: a try lost between the two left the caption in the sidecar
    alone. The retry must not call that done."""
    with ExifToolSession(mode="both") as both, ExifToolSession(mode="sidecar") as sidecar_only:
        job = WriteJob(photo, CAPTION, ("bridge", "river"), snapshot=both.snapshot(photo))
        sidecar_only.write(photo, CAPTION, ("bridge", "river"))  # the first try, lost after its sidecar
        assert own_description(both, photo) is None and both.read(photo).description == CAPTION
        report = write_photo(both, job, retried=True)
        assert report.ok and not report.already and report.written_to == "embedded", report
        assert own_description(both, photo) == CAPTION


def test_a_retry_finds_a_first_try_that_fell_back_to_the_sidecar(photo: Path) -> None:
    """A read-only photo takes its caption in a sidecar: a retried write puts it there again (the same
    bytes) and says where it is, never "embedded"."""
    os.chmod(photo, stat.S_IRUSR | stat.S_IRGRP)
    try:
        with ExifToolSession(mode="embed") as session:
            job = WriteJob(photo, CAPTION, ("bridge",), snapshot=session.snapshot(photo))
            first = write_photo(session, job)
            assert first.ok and first.written_to == str(session.sidecar_for(photo)), first
            retried = write_photo(session, job, retried=True)
            assert retried.ok and retried.written_to == str(session.sidecar_for(photo)), retried
            assert own_description(session, photo) is None
    finally:
        os.chmod(photo, stat.S_IRUSR | stat.S_IWUSR)


def test_a_retry_after_a_lost_rename_writes_nothing(photo: Path) -> None:
    with ExifToolSession(mode="embed") as session:
        job = WriteJob(photo, CAPTION, ("bridge",), snapshot=session.snapshot(photo))
        assert write_photo(session, job).written_to == "embedded"
        before = photo.stat()
        retried = write_photo(session, job, retried=True)
        assert retried.ok and retried.already and retried.written_to == "embedded"
        after = photo.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_node_writes_only_the_file_the_plan_saw(photo: Path, tmp_path: Path) -> None:
    """Another file at that path on the node (a stale folder, the wrong share) or none at all (the
    library not mounted there): not written, a transient failure the next run retries."""
    node = PhotoIO(MetadataSettings(), processes=2)
    try:
        others = [tmp_path / "lib" / f"other{n}.jpg" for n in range(3)]
        for other in others:
            shutil.copyfile(photo, other)
        jobs = [WriteJob(p, CAPTION, ("bridge",), snapshot=node.session.snapshot(p)) for p in [photo, *others]]
        os.utime(others[0], ns=(1_000_000_000, 1_000_000_000))  # not the file the plan saw
        bytes_before = others[0].read_bytes()
        others[1].unlink()  # not there on this node
        reports = node.write(jobs)
        assert [r.ok for r in reports] == [True, False, False, True]
        assert "is not the one planned" in reports[1].reason and reports[1].transient
        assert "not found on" in reports[2].reason and reports[2].transient
        assert others[0].read_bytes() == bytes_before  # never touched
        assert own_description(node.session, photo) == CAPTION == own_description(node.session, others[2])
        assert {r.writer for r in reports} == {reports[0].writer} and reports[0].writer.endswith(f":{os.getpid()}")
    finally:
        node.close()
