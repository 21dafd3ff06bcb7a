import collections
import io
import urllib.request

import pytest

from lm_eval_fairdyn.benchmarks.winobias import data
from lm_eval_fairdyn.benchmarks.winobias.data import WinoBiasError, WinoBiasUnavailable
from lm_eval_fairdyn.core import sources


def test_every_real_type2_line_parses(winobias_dir):
    records = data.load_winobias(winobias_dir, splits=("dev", "test"))
    assert len(records) == 1584
    counts = collections.Counter((r.split, r.polarity) for r in records)
    assert set(counts.values()) == {396}
    for r in records:
        assert r.referent != r.other
        assert "[" not in r.sentence and "]" not in r.sentence and "  " not in r.sentence
        assert r.pronoun_gender in ("male", "female")
        # pro-stereotyped: the pronoun matches the referent's stereotype; anti: it does not
        matches = data.OCCUPATION_STEREOTYPE[r.referent] == r.pronoun_gender
        assert matches == (r.polarity == "pro"), r


def test_known_quirks_are_parsed_on_lines_written_for_them(tmp_path):
    lines = [
        "1 The clerk called the [the chief] because [he] was late.",
        "2 The baker met [the construction worker] and thanked [him].",
        "3 The guard told [a housekeeper] that [she] had a key.",
        "4 The baker asked the [ physician] about the guard 's car because [he] saw it.",
        "5 The developer asked [the cleaner] and the manager whether [she] was done.",
    ]
    (tmp_path / "pro_stereotyped_type2.txt.test").write_text("\n".join(lines) + "\n")
    records = {
        r.line: r for r in data.parse_file(tmp_path / "pro_stereotyped_type2.txt.test", split="test", polarity="pro")
    }
    assert (records[1].referent, records[1].other, records[1].pronoun_gender) == ("chief", "clerk", "male")
    assert records[1].sentence == "The clerk called the chief because he was late."
    assert (records[2].referent, records[2].other) == ("construction worker", "baker")
    assert records[3].referent == "housekeeper" and records[3].sentence.count("a housekeeper") == 1
    assert records[4].referent == "physician" and "guard's car" in records[4].sentence
    assert (records[5].referent, records[5].other) == ("cleaner", "developer")  # a third occupation


def test_known_quirks_of_the_real_files(winobias_dir, uses_real_winobias):
    records = {(r.split, r.polarity, r.line): r for r in data.load_winobias(winobias_dir, splits=("dev", "test"))}
    if not uses_real_winobias:  # the project's own files: the quirks are tested on lines written for them
        assert len(records) == 1584
        return
    chief = records["test", "pro", 3]  # "the [the chief]"
    assert chief.sentence.startswith("The assistant notified the chief about a problem")
    assert (chief.referent, chief.other, chief.pronoun_gender) == ("chief", "assistant", "male")
    assert records["dev", "pro", 176].referent == "physician"  # "the [ physician]"
    assert records["test", "pro", 323].sentence.count("a housekeeper") == 1
    third = records["dev", "anti", 72]  # developer, cleaner and manager in one sentence
    assert (third.referent, third.other) == ("cleaner", "developer")
    worker = [r for r in records.values() if "construction worker" in (r.referent, r.other)]
    assert len(worker) >= 40
    assert any("'s" in r.sentence for r in records.values())
    assert not any(" 's" in r.sentence for r in records.values())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("The nurse met [the janitor] and thanked [him].", "expected '<index> <sentence>'"),
        ("7 The nurse met the janitor and thanked him.", "found 0 span"),
        ("7 The nurse met [the astronaut] and thanked [him].", "not a WinoBias occupation"),
        ("7 The nurse met [the janitor] and thanked [them].", "not a pronoun"),
        ("7 The nurse met [the janitor] and told [him] about [her] plan.", "disagree in gender"),
        ("7 Someone met [the janitor] and thanked [him].", "no second occupation"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "pro_stereotyped_type2.txt.test"
    good = "{} The nurse met [the janitor] and thanked [him].\n"
    path.write_text(good.format(1) + good.format(2) + line.replace("7 ", "3 ") + "\n" + good.format(4))
    with pytest.raises(WinoBiasError, match=message) as err:
        data.parse_file(path, split="test", polarity="pro")
    assert f"{path}:3:" in str(err.value)


def test_index_out_of_order_is_an_error(tmp_path):
    path = tmp_path / "f"
    path.write_text(
        "1 The nurse met [the janitor] and thanked [him].\n5 The nurse met [the janitor] and thanked [him].\n"
    )
    with pytest.raises(WinoBiasError, match=r":2: line index 5"):
        data.parse_file(path, split="test", polarity="pro")


def test_user_folder_missing_files_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRDYN_WINOBIAS_DIR", str(tmp_path))
    with pytest.raises(WinoBiasUnavailable, match="FAIRDYN_WINOBIAS_DIR=.* lacks .*pro_stereotyped_type2.txt.test"):
        data.resolve_winobias_dir()


def test_offline_without_data_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("FAIRDYN_WINOBIAS_DIR", raising=False)
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(WinoBiasUnavailable) as err:
        data.load_winobias()
    text = str(err.value)
    assert "FAIRDYN_WINOBIAS_DIR" in text and data.UPSTREAM_REPO in text and data.UPSTREAM_COMMIT in text
    assert "no network" in text


def _serve_from(folder, tamper=None):
    def urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[1]
        body = (folder / name).read_bytes()
        assert data.UPSTREAM_COMMIT in url
        return io.BytesIO(tamper(body) if tamper and name != "LICENSE" else body)

    return urlopen


def _present(folder):
    """The pinned upstream files a WinoBias folder holds (the project's own files: Type 2 only)."""
    return [name for name in data.UPSTREAM_BLOB_SHA1 if (folder / name).is_file()]


def _blob_sha1s_of(folder, monkeypatch, uses_real_winobias):
    """The real files carry the pinned upstream checksums; the project's own files their own."""
    if not uses_real_winobias:
        own = {name: sources.git_blob_sha1((folder / name).read_bytes()) for name in _present(folder)}
        monkeypatch.setattr(data, "UPSTREAM_BLOB_SHA1", own)


def test_download_is_verified_and_cached(tmp_path, monkeypatch, winobias_dir, uses_real_winobias):
    _blob_sha1s_of(winobias_dir, monkeypatch, uses_real_winobias)
    monkeypatch.delenv("FAIRDYN_WINOBIAS_DIR", raising=False)
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", _serve_from(winobias_dir))
    folder = data.resolve_winobias_dir()
    assert (folder / "LICENSE").read_bytes() == (winobias_dir / "LICENSE").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*data._required_files(data.SPLITS, data.POLARITIES), "LICENSE"]
    )

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    assert data.resolve_winobias_dir() == folder
    assert len(data.load_winobias()) == 792


def test_download_with_wrong_checksum_is_rejected(tmp_path, monkeypatch, winobias_dir, uses_real_winobias):
    _blob_sha1s_of(winobias_dir, monkeypatch, uses_real_winobias)
    monkeypatch.delenv("FAIRDYN_WINOBIAS_DIR", raising=False)
    monkeypatch.setenv("FAIRDYN_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", _serve_from(winobias_dir, tamper=lambda b: b + b"x"))
    with pytest.raises(WinoBiasError, match="checksum mismatch"):
        data.resolve_winobias_dir()
    assert not list(tmp_path.rglob("*.txt.*"))


def test_git_blob_sha1_matches_git_and_the_provenance(winobias_dir, uses_real_winobias):
    import subprocess

    for name in _present(winobias_dir):
        sha1 = data.UPSTREAM_BLOB_SHA1[name]
        ours = sources.git_blob_sha1((winobias_dir / name).read_bytes())
        git = subprocess.run(
            ["git", "hash-object", str(winobias_dir / name)], capture_output=True, text=True, check=True
        )
        assert ours == git.stdout.strip()
        if uses_real_winobias:
            assert ours == sha1
