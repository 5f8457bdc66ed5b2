"""Every command against a PostgreSQL index (``--db postgresql://...``): the same rows and statuses as on
SQLite, search answered from the server, one writer at a time across processes (an advisory lock), and
the schema made and upgraded on the server.

Real components: a PostgreSQL server (tests.postgres), the tiny BLIP, exiftool, `phototag watch` and
lock holders as processes of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import Result

from phototag.daemon_state import read_state, refusal
from phototag.database import IndexLocation, locate
from phototag.index import Photo, PhotoIndex
from phototag.migrations import SCHEMA_VERSION
from tests.conftest import REPO, copy_from_corpus, description, index_rows, start_daemon, wait_until
from tests.conftest import run_cli as run
from tests.postgres import pg_photos, pg_rows

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

PHOTOS = [
    "jpg/gps/DSCN0010.jpg",
    "jpg/gps/DSCN0012.jpg",
    "jpg/Canon_40D.jpg",
    "jpg/MWG.jpg",  # carries a person's description: kept, indexed as human
]


def add_broken_photo(lib: Path) -> None:
    """A photo that fails with its reason (not an image at all)."""
    (lib / "broken.jpg").write_bytes(b"this is not a JPEG" * 100)


def config_for(folder: Path, tiny_model: Path, db: str) -> Path:
    """``folder/config.toml`` with the tiny model and ``db`` (a file path or a URL) as the index."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text(
        f'[model]\nname = "{tiny_model}"\ndevice = "cpu"\nbatch_size = 4\nmax_new_tokens = 8\nnum_beams = 1\n'
        f'[index]\ndb = "{db}"\n[watch]\nsettle_seconds = 0.3\nrescan_interval = 0\nstop_timeout = 20\n'
    )
    return config


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; none outlives it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def by_name(rows: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """Rows keyed by file name, the folder left out of failure reasons (two libraries compared)."""
    return {
        Path(path).name: tuple(v.replace(str(Path(path).parent), "LIB") if isinstance(v, str) else v for v in row)
        for path, row in rows.items()
    }


def refusal_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


# -- backfill, search, show, status: the same as on SQLite ---------------------------------------------


@pytest.mark.timeout(900)
def test_backfill_on_postgres_records_what_sqlite_records(tmp_path: Path, tiny_model: Path, pg_url: str) -> None:
    lite_lib, pg_lib = tmp_path / "lite" / "lib", tmp_path / "pg" / "lib"
    copy_from_corpus(PHOTOS, lite_lib)
    copy_from_corpus(PHOTOS, pg_lib)
    add_broken_photo(lite_lib)
    add_broken_photo(pg_lib)
    lite = config_for(tmp_path / "lite", tiny_model, str(tmp_path / "lite" / "index.sqlite3"))
    pg = config_for(tmp_path / "pg", tiny_model, pg_url)

    assert run(lite, "backfill", str(lite_lib), "--no-progress").exit_code == 0
    result = run(pg, "backfill", str(pg_lib), "--no-progress")
    assert result.exit_code == 0, result.output

    sqlite_rows = {
        path: (row["status"], row["caption"], row["caption_source"], row["keywords"], row["failure_reason"])
        for path, row in index_rows(tmp_path / "lite" / "index.sqlite3").items()
    }
    pg_side = pg_photos(pg_url)
    assert by_name(pg_side) == by_name(sqlite_rows)
    statuses = {row[0] for row in pg_side.values()}
    assert statuses == {"done", "failed"}
    assert by_name(pg_side)["MWG.jpg"][2] == "human"
    # the photos phototag captioned say what the index says
    for path, row in pg_side.items():
        if row[2] == "model":
            assert description(Path(path)) == row[1]

    # a rerun changes nothing: no photo rewritten, no row touched
    files_before = {p: p.read_bytes() for p in pg_lib.iterdir()}
    updated_before = pg_rows(pg_url, "SELECT path, updated_at FROM photos ORDER BY path")
    again = run(pg, "backfill", str(pg_lib), "--no-progress")
    assert again.exit_code == 0, again.output
    assert {p: p.read_bytes() for p in pg_lib.iterdir()} == files_before
    assert pg_rows(pg_url, "SELECT path, updated_at FROM photos ORDER BY path") == updated_before

    # search answers from PostgreSQL, by a word of a caption
    path, row = next((p, r) for p, r in pg_side.items() if r[0] == "done" and r[2] == "model")
    word = next(w for w in str(row[3]).split() if len(w) > 3)
    found = run(pg, "search", word, "--mode", "keyword", "--format", "json")
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.output.splitlines()]
    assert path in [hit["path"] for hit in hits]
    assert all(Path(hit["path"]).parent == pg_lib for hit in hits)

    shown = run(pg, "show", path, "--json")
    assert shown.exit_code == 0 and json.loads(shown.output)["caption"] == row[1]

    lite_status = json.loads(run(lite, "status", "--json").output)
    pg_status = json.loads(run(pg, "status", "--json").output)
    assert pg_status["counts"] == lite_status["counts"]
    assert pg_status["index"].startswith("postgresql://")
    assert [Path(f["path"]).name for f in pg_status["failed"]] == ["broken.jpg"]


@pytest.mark.timeout(900)
def test_restore_prune_and_reindex_on_postgres(tmp_path: Path, tiny_model: Path, pg_url: str) -> None:
    lib = tmp_path / "lib"
    photos = copy_from_corpus(PHOTOS[:3], lib)
    originals = {photo: description(photo) for photo in photos}
    config = config_for(tmp_path, tiny_model, pg_url)
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    captions = dict(pg_rows(pg_url, "SELECT path, caption FROM photos"))

    # restore: the photo says what it said before phototag; its row stays, restored, without a caption
    restored = run(config, "restore", str(photos[0]), "--no-progress")
    assert restored.exit_code == 0, restored.output
    assert description(photos[0]) == originals[photos[0]]
    assert pg_photos(pg_url)[str(photos[0])][:2] == ("restored", None)

    # a deleted photo is missing after the next backfill, and prune forgets it
    photos[1].unlink()
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0
    assert pg_photos(pg_url)[str(photos[1])][0] == "missing"
    assert pg_photos(pg_url)[str(photos[0])][0] == "restored"  # restored photos stay restored
    pruned = run(config, "prune")
    assert pruned.exit_code == 0, pruned.output
    assert str(photos[1]) not in pg_photos(pg_url)

    # reindex: taken dates and vectors, in the database
    pg_rows(pg_url, "UPDATE photos SET taken_at = NULL")
    pg_rows(pg_url, "DELETE FROM photo_embeddings")
    reindexed = run(config, "reindex", "--no-progress")
    assert reindexed.exit_code == 0, reindexed.output
    assert pg_rows(pg_url, "SELECT taken_at FROM photos WHERE path = %s", [str(photos[2])])[0][0].startswith("20")
    vectors = pg_rows(
        pg_url, "SELECT p.path, length(e.vector) FROM photo_embeddings e JOIN photos p ON p.id = e.photo_id"
    )
    assert vectors == [(str(photos[2]), 384 * 4)]

    # search by meaning from the vectors in the database: the caption itself is its best match
    hit = run(config, "search", captions[str(photos[2])], "--mode", "semantic", "--format", "json")
    assert hit.exit_code == 0, hit.output
    assert json.loads(hit.output.splitlines()[0])["path"] == str(photos[2])
    hybrid = run(config, "search", captions[str(photos[2])], "--format", "json")
    assert json.loads(hybrid.output.splitlines()[0])["path"] == str(photos[2])


# -- one writer at a time, across processes --------------------------------------------------------


def hold_pg_lock(url: str, command: str, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process of its own holding the index's writer lock (as another machine would) until killed."""
    code = (
        "import sys; from pathlib import Path; from phototag.database import IndexLocation; "
        "from phototag.pg_lock import PgWriterLock; "
        f"lock = PgWriterLock(IndexLocation(Path('x'), sys.argv[1]), {command!r}); lock.acquire(); "
        "print('locked', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
    return proc


@pytest.mark.timeout(600)
def test_one_writer_across_processes_by_an_advisory_lock(
    tmp_path: Path, tiny_model: Path, pg_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    lib = tmp_path / "lib"
    photos = copy_from_corpus(PHOTOS[:2], lib)
    config = config_for(tmp_path, tiny_model, pg_url)
    PhotoIndex(IndexLocation(tmp_path / "unused", pg_url)).close()  # an index, empty
    holder = hold_pg_lock(pg_url, "phototag backfill /mnt/photos", procs)
    for args in (["backfill", str(lib)], ["restore", "--all"], ["reindex"], ["prune"]):
        line = refusal_line(run(config, *args, "--no-progress") if args[0] != "prune" else run(config, *args))
        assert f"phototag backfill /mnt/photos (pid {holder.pid}) is already running on the index {pg_url}" in line
        assert f"kill {holder.pid}" in line
    assert pg_rows(pg_url, "SELECT count(*) FROM photos") == [(0,)]  # nothing was written
    assert all(description(photo) is None or "phototag" not in str(description(photo)) for photo in photos)
    # reading needs no lock
    assert run(config, "status").exit_code == 0
    assert run(config, "backfill", str(lib), "--dry-run", "--no-progress").exit_code == 0

    # the server drops the lock of a session that dies, even by SIGKILL
    holder.kill()
    holder.wait(10)
    result = run(config, "backfill", str(lib), "--no-progress")
    assert result.exit_code == 0, result.output
    assert {row[0] for row in pg_photos(pg_url).values()} == {"done"}


def test_refusal_names_the_machine_of_a_writer_elsewhere() -> None:
    line = refusal("postgresql://nas/photos", 4242, "phototag watch", host="nas.example")
    assert line.startswith("phototag watch (pid 4242 on nas.example) is already running on the index")
    assert "on nas.example: systemctl --user stop phototag, or kill 4242" in line


@pytest.mark.timeout(900)
def test_watch_daemon_writes_postgres_and_keeps_other_writers_out(
    tmp_path: Path, tiny_model: Path, pg_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    config = config_for(tmp_path, tiny_model, pg_url)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, lib, log, procs)
    side = locate(pg_url, Path("unused"), Path(os.environ["XDG_DATA_HOME"]) / "phototag").path

    def scanned() -> bool:
        assert daemon.poll() is None, log.read_text()
        state = read_state(side) or {}
        return state.get("pid") == daemon.pid and int(state.get("scans_done", 0)) >= 1

    wait_until(scanned, timeout=300, what="the daemon's catch-up scan")
    photo = copy_from_corpus(PHOTOS[:1], tmp_path / "incoming")[0]
    shutil.move(photo, lib / photo.name)
    wait_until(
        lambda: pg_photos(pg_url).get(str(lib / photo.name), ("",))[0] == "done",
        timeout=300,
        what="the daemon's caption in PostgreSQL",
    )
    line = refusal_line(run(config, "backfill", str(lib), "--no-progress"))
    assert f"phototag watch (pid {daemon.pid}) is already running on the index {pg_url}" in line
    second = subprocess.run(
        [sys.executable, "-m", "phototag", "--config", str(config), "watch", str(lib)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1 and f"phototag watch (pid {daemon.pid}) is already running" in second.stderr
    status = json.loads(run(config, "status", "--json").output)
    assert status["daemon"]["running"] and status["counts"]["done"] == 1
    # any machine's status names the writer, from the server
    assert status["writer"]["pid"] == daemon.pid and status["writer"]["command"] == "phototag watch"
    assert f"writer: phototag watch (pid {daemon.pid} on " in run(config, "status").output
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, log.read_text()
    assert json.loads(run(config, "status", "--json").output)["writer"] is None
    assert run(config, "backfill", str(lib), "--no-progress").exit_code == 0  # the lock went with it


# -- the schema on the server ---------------------------------------------------------------------


def test_schema_is_made_and_upgraded_on_postgres(pg_url: str) -> None:
    location = IndexLocation(Path("unused"), pg_url)
    PhotoIndex(location).close()
    columns = {
        r[0]: r[1]
        for r in pg_rows(
            pg_url, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'photos'"
        )
    }
    assert columns["mtime_ns"] == "bigint" and columns["size"] == "bigint"
    assert columns["search_vector"] == "tsvector"
    indexes = {r[0] for r in pg_rows(pg_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'photos'")}
    assert {"ix_photos_search", "ix_photos_status", "ix_photos_path_prefix"} <= indexes
    assert pg_rows(pg_url, "SELECT version FROM phototag_schema") == [(SCHEMA_VERSION,)]

    # an index from an older phototag: a column it lacks is added, the version raised
    pg_rows(pg_url, "ALTER TABLE photos DROP COLUMN mtime_before_write_ns")
    pg_rows(pg_url, "UPDATE phototag_schema SET version = 2")
    PhotoIndex(location).close()
    assert pg_rows(pg_url, "SELECT version FROM phototag_schema") == [(SCHEMA_VERSION,)]
    assert pg_rows(
        pg_url,
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'photos' "
        "AND column_name = 'mtime_before_write_ns'",
    ) == [("bigint",)]

    # a changed caption drops its vector, as on SQLite
    pg_rows(
        pg_url,
        "INSERT INTO photos (path, size, mtime_ns, status, keywords, caption, created_at, updated_at) "
        "VALUES ('/p/a.jpg', 1, 1, 'done', 'dog', 'a dog', 0, 0)",
    )
    pg_rows(pg_url, "INSERT INTO photo_embeddings (photo_id, model, vector) SELECT id, 'm', '\\x00' FROM photos")
    pg_rows(pg_url, "UPDATE photos SET keywords = 'dog beach'")
    assert pg_rows(pg_url, "SELECT count(*) FROM photo_embeddings") == [(1,)]
    pg_rows(pg_url, "UPDATE photos SET caption = 'a cat'")
    assert pg_rows(pg_url, "SELECT count(*) FROM photo_embeddings") == [(0,)]


def test_an_unreachable_server_is_one_line(tmp_path: Path, tiny_model: Path) -> None:
    config = config_for(tmp_path, tiny_model, "postgresql://nobody@127.0.0.1:1/none")
    for args in (["status"], ["search", "dog"], ["backfill", str(tmp_path)]):
        result = run(config, *args)
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert "\n" not in line and "cannot" in line and "postgresql://nobody@127.0.0.1:1/none" in line, line


# -- moving an existing SQLite index to PostgreSQL ------------------------------------------------------

PHOTO_COLUMNS = [c.name for c in Photo.__table__.columns]


def sqlite_table(db: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return [tuple(row) for row in conn.execute(sql)]


@pytest.mark.timeout(900)
def test_copy_to_postgres_moves_every_row_undo_data_and_vectors(tmp_path: Path, tiny_model: Path, pg_url: str) -> None:
    lib, db = tmp_path / "lib", tmp_path / "index.sqlite3"
    photos = copy_from_corpus(PHOTOS, lib)
    add_broken_photo(lib)
    originals = {photo: description(photo) for photo in photos}
    lite = config_for(tmp_path, tiny_model, str(db))
    assert run(lite, "backfill", str(lib), "--no-progress").exit_code == 0
    assert run(lite, "restore", str(photos[0]), "--no-progress").exit_code == 0  # restored, undo data kept
    moved_away = photos[1].read_bytes()
    photos[1].unlink()
    assert run(lite, "backfill", str(lib), "--no-progress").exit_code == 0  # missing, undo data kept
    statuses = {row[0] for row in sqlite_table(db, "SELECT status FROM photos")}
    assert statuses == {"done", "failed", "missing", "restored"}
    assert sqlite_table(db, "SELECT count(*) FROM photo_embeddings")[0][0] >= 1
    assert sqlite_table(db, "SELECT count(*) FROM photos WHERE original_metadata IS NOT NULL")[0][0] >= 2

    copied = run(lite, "reindex", "--copy-to", pg_url, "--no-progress")
    assert copied.exit_code == 0, copied.output
    assert f"use it with --db {pg_url}" in copied.output

    columns = ", ".join(PHOTO_COLUMNS)
    every_photo = f"SELECT {columns} FROM photos ORDER BY id"
    every_vector = "SELECT seq, photo_id, model, vector FROM photo_embeddings ORDER BY seq"
    assert pg_rows(pg_url, every_photo) == sqlite_table(db, every_photo)
    assert [(s, p, m, bytes(v)) for s, p, m, v in pg_rows(pg_url, every_vector)] == sqlite_table(db, every_vector)

    # a target that holds photos is refused, unless told to replace them
    again = run(lite, "reindex", "--copy-to", pg_url, "--no-progress")
    assert again.exit_code == 1 and "already holds" in again.output and "--replace-target" in again.output
    pg_rows(pg_url, "UPDATE photos SET caption = 'changed on the server' WHERE status = 'done'")
    replaced = run(lite, "reindex", "--copy-to", pg_url, "--replace-target", "--no-progress")
    assert replaced.exit_code == 0, replaced.output
    assert pg_rows(pg_url, every_photo) == sqlite_table(db, every_photo)
    assert [(s, p, m, bytes(v)) for s, p, m, v in pg_rows(pg_url, every_vector)] == sqlite_table(db, every_vector)

    # the copy is the same index: nothing is captioned twice, new photos get new ids, undo works from it
    pg = config_for(tmp_path / "pg", tiny_model, pg_url)
    captioned = pg_rows(pg_url, "SELECT path, captioned_at FROM photos ORDER BY path")
    files = {p: p.read_bytes() for p in lib.iterdir()}
    photos[1].write_bytes(moved_away)  # back from missing, with its caption
    copy_from_corpus(["jpg/Canon_PowerShot_S40.jpg"], lib)
    assert run(pg, "backfill", str(lib), "--no-progress").exit_code == 0
    after = dict(pg_rows(pg_url, "SELECT path, captioned_at FROM photos"))
    assert all(after[path] == when for path, when in captioned)
    assert all(p.read_bytes() == data for p, data in files.items())
    assert pg_photos(pg_url)[str(photos[1])][0] == "done"
    assert pg_photos(pg_url)[str(lib / "Canon_PowerShot_S40.jpg")][0] == "done"
    assert run(pg, "restore", str(photos[2]), "--no-progress").exit_code == 0
    assert description(photos[2]) == originals[photos[2]]


def test_a_db_setting_names_a_file_or_a_server(tmp_path: Path) -> None:
    assert locate("", tmp_path / "default.sqlite3", tmp_path) == IndexLocation(tmp_path / "default.sqlite3")
    assert locate("~/x.sqlite3", tmp_path, tmp_path).path == Path("~/x.sqlite3").expanduser()
    nas = locate("postgresql://photos:secret@nas.local/phototag", tmp_path, tmp_path)
    assert nas.is_server and nas.dialect == "postgresql"
    assert nas.engine_url() == "postgresql+psycopg://photos:secret@nas.local/phototag"
    assert str(nas) == "postgresql://photos:***@nas.local/phototag"  # never print a password
    assert "secret" not in str(nas.path) and nas.path.parent == tmp_path / "servers"
    other = locate("postgresql://photos@nas.local/archive", tmp_path, tmp_path)
    assert other.path != nas.path  # two servers never share side files
    assert locate("postgres:///db", tmp_path, tmp_path).engine_url() == "postgresql+psycopg:///db"
    assert locate("postgresql+psycopg2://h/db", tmp_path, tmp_path).engine_url() == "postgresql+psycopg2://h/db"


@pytest.mark.timeout(900)
def test_kill_9_mid_backfill_then_resume_on_postgres(
    tmp_path: Path, tiny_model: Path, pg_url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    lib = tmp_path / "lib"
    small = [f"jpg/gps/DSCN00{n}.jpg" for n in ("10", "12", "21", "25", "27", "29", "38", "40", "42")]
    for i in range(2):  # 18 photos
        copy_from_corpus(small, lib / f"set{i}")
    config = config_for(tmp_path, tiny_model, pg_url)
    config.write_text(config.read_text().replace("batch_size = 4", "batch_size = 1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "phototag", "--config", str(config), "backfill", str(lib), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs.append(proc)

    def done() -> dict[str, str]:
        assert proc.poll() is None, f"the backfill ended (exit {proc.returncode}) before it was killed"
        import psycopg

        try:
            return dict(pg_rows(pg_url, "SELECT path, caption FROM photos WHERE status = 'done'"))
        except psycopg.errors.UndefinedTable:  # the schema is being made
            return {}

    wait_until(lambda: len(done()) >= 4, timeout=300, what="4 captions in PostgreSQL")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    before = dict(pg_rows(pg_url, "SELECT path, caption FROM photos WHERE status = 'done'"))
    mtimes = {path: Path(path).stat().st_mtime_ns for path in before}

    # the server dropped the dead writer's lock: the rerun is not refused, and finishes the rest only
    rerun = run(config, "backfill", str(lib), "--no-progress")
    assert rerun.exit_code == 0, rerun.output
    after = pg_photos(pg_url)
    assert len(after) == 18 and {row[0] for row in after.values()} == {"done"}
    assert {path: after[path][1] for path in before} == before
    assert {path: Path(path).stat().st_mtime_ns for path in before} == mtimes
    for path, row in after.items():
        assert description(Path(path)) == row[1]
