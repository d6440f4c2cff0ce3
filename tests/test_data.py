"""The loader reads the official layout safely, validates and caches it, and splits it."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import re
import tarfile
import tempfile
import threading

import numpy as np
import pytest
import tqdm

from cifarlab import load_data
from cifarlab.data import cache, dataset, safe_files, standard
from cifarlab.errors import RunError, UserError
from tests.conftest import write_cifar10_archive


def test_reads_archive_and_extracted_folder_alike(tiny_archive, tmp_path):
    from_archive = load_data(tiny_archive)
    with tarfile.open(tiny_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    from_folder = load_data(tmp_path / "cifar-10-batches-py")
    from_parent = load_data(tmp_path)
    for other in (from_folder, from_parent):
        np.testing.assert_array_equal(from_archive.x_train, other.x_train)
        np.testing.assert_array_equal(from_archive.y_test, other.y_test)
    assert from_archive.x_train.dtype == np.uint8
    assert from_archive.x_train.shape[1:] == (32, 32, 3)
    assert from_archive.class_names[3] == "cat"


def test_split_is_seeded_disjoint_and_a_fifth(tiny_archive):
    first, again = load_data(tiny_archive, seed=3), load_data(tiny_archive, seed=3)
    other = load_data(tiny_archive, seed=4)
    # 80 training images, 8 per class: a small subset, so round(0.2 · 8) = 2 of each class are
    # held out for validation, 20 in all, and 60 train.
    assert (len(first.y_val), len(first.y_train), len(first.y_test)) == (20, 60, 40)
    np.testing.assert_array_equal(first.x_val, again.x_val)
    assert not np.array_equal(first.x_val, other.x_val)
    train_rows = {row.tobytes() for row in first.x_train}
    assert not any(row.tobytes() in train_rows for row in first.x_val)


def test_decoded_arrays_are_cached(tiny_archive):
    load_data(tiny_archive)
    cached = list((cache.directory() / "decoded").glob("cifar10-*.npz"))
    assert cached
    with np.load(cached[0]) as arrays:
        assert arrays["x_train"].shape == (80, 32, 32, 3)


def test_environment_variable_names_the_data(tiny_archive, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(tiny_archive))
    assert dataset.locate() == tiny_archive


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(tmp_path / "nowhere.tar.gz")


def test_truncated_archive_is_refused(tiny_archive, tmp_path):
    truncated = tmp_path / "cifar-10-python.tar.gz"
    truncated.write_bytes(tiny_archive.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated"):
        load_data(truncated)


def test_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(UserError, match="unsafe member"):
        load_data(archive)
    assert not (tmp_path.parent / "escape.txt").exists()


class _RunsCode:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    evil = pickle.dumps({b"data": _RunsCode(marker), b"labels": []})
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(evil)
    with pytest.raises(UserError, match="data_batch_2"):
        load_data(tmp_path / "cifar-10-batches-py")
    assert not marker.exists()


def test_wrong_array_shape_is_refused(tmp_path):
    archive = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(UserError, match="uint8×3072"):
        load_data(tmp_path / "cifar-10-batches-py")


def test_download_with_wrong_checksum_leaves_nothing(tiny_archive, tmp_path):
    destination = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(RunError, match="SHA-256"):
        safe_files.download(
            tiny_archive.as_uri(),
            destination,
            standard.STANDARDS["cifar10"].downloads[0].sha256,
            quiet=True,
        )
    assert not destination.exists()
    assert list(destination.parent.iterdir()) == []


def test_download_with_right_checksum_stores_the_file(tiny_archive, tmp_path):
    destination = tmp_path / "cifar-10-python.tar.gz"
    digest = safe_files.sha256_of(tiny_archive)
    safe_files.download(tiny_archive.as_uri(), destination, digest, quiet=True)
    assert destination.read_bytes() == tiny_archive.read_bytes()


def test_failed_download_names_the_url_and_the_flag(tmp_path):
    missing = (tmp_path / "absent.tar.gz").as_uri()
    with pytest.raises(RunError, match="--data") as error:
        safe_files.download(
            missing,
            tmp_path / "out.tar.gz",
            standard.STANDARDS["cifar10"].downloads[0].sha256,
            quiet=True,
        )
    assert missing in str(error.value)


def test_small_subsets_get_a_class_balanced_validation_split(tiny_archive):
    # 8 training images per class: a random 20% could give one class 4 validation images and
    # another none; a stratified split holds out round(0.2 · 8) = 2 of each.
    assert load_data(tiny_archive).counts()["val"] == [2] * 10


def test_full_sets_keep_the_notebooks_random_split_unless_asked():
    labels = np.repeat(np.arange(10), 2_000)  # 20,000 images: not a small subset.
    images = np.zeros((len(labels), 1, 1, 3), np.uint8)
    names = tuple(str(index) for index in range(10))
    arguments = (images, labels, images[:10], labels[:10], names, "synthetic", 0.2, 0)
    random_counts = dataset.split(*arguments).counts()["val"]
    assert sum(random_counts) == 4_000 and len(set(random_counts)) > 1
    assert dataset.split(*arguments, stratify=True).counts()["val"] == [400] * 10


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 did for the official archive: byte strings as `str` (BINSTRING)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, text: bytes | str) -> None:
        data = text if isinstance(text, bytes) else text.encode("ascii")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(text)

    dispatch[bytes] = save_python2_str
    dispatch[str] = save_python2_str


def python2_pickle(payload: dict) -> bytes:
    """`payload` as Python 2 with NumPy 1 wrote it, arrays rebuilt by `numpy.core.multiarray`."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(payload)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_an_archive_pickled_by_python_2_reads_like_one_pickled_by_python_3(tiny_archive, tmp_path):
    """The official archive was pickled by Python 2: its byte strings are `str` opcodes, which
    only `encoding="bytes"` reads back as the `bytes` keys and pixel rows the loader expects."""
    python2, arrays = tmp_path / "cifar-10-python.tar.gz", 0
    with tarfile.open(tiny_archive) as source, tarfile.open(python2, "w:gz") as target:
        for member in source:
            payload = pickle.loads(source.extractfile(member).read())  # Our own fixture.
            data = python2_pickle(payload)
            arrays += b"cnumpy.core.multiarray\n" in data
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    assert arrays == 6  # Five training batches and the test batch; the meta file has none.
    expected, loaded = load_data(tiny_archive), load_data(python2)
    np.testing.assert_array_equal(loaded.x_train, expected.x_train)
    np.testing.assert_array_equal(loaded.y_test, expected.y_test)
    assert loaded.class_names == expected.class_names


class _Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_a_refused_global_is_named_in_the_sentence():
    with pytest.raises(UserError) as error:
        safe_files.safe_unpickle(pickle.dumps({b"data": _Evaluates()}), "data_batch_1")
    assert str(error.value) == (
        "data_batch_1 is not a valid dataset file (forbidden global builtins.eval); replace it."
    )


def test_sha256_of_a_file_of_several_blocks_is_the_digest_of_its_bytes(tmp_path):
    # Three and a half mebibytes: read in blocks, hashed as one.
    content = bytes(range(256)) * (7 * 2**11)
    (tmp_path / "file").write_bytes(content)
    assert safe_files.sha256_of(tmp_path / "file") == hashlib.sha256(content).hexdigest()


@pytest.fixture
def slow_server(tiny_archive):
    """An HTTP server that sends half of `tiny_archive`, then the rest once `finish` is set."""
    payload = tiny_archive.read_bytes()
    state = {"length": True, "half_sent": threading.Event(), "finish": threading.Event()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            if state["length"]:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()  # HTTP/1.0: without a length, the end of the stream ends it.
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            state["half_sent"].set()
            state["finish"].wait(30)
            self.wfile.write(payload[len(payload) // 2 :])

        def log_message(self, *arguments):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
    yield state
    state["finish"].set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("length", [True, False], ids=["with length", "without length"])
def test_a_download_appears_only_when_complete_and_shows_its_progress(
    slow_server, tiny_archive, tmp_path, capsys, monkeypatch, length
):
    # The partial file is written beside the destination, not in the temporary folder (another
    # file system, where the final rename would not be atomic; here, one that cannot be used).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "not a folder"))
    (tmp_path / "not a folder").write_text("")
    slow_server["length"] = length
    destination = tmp_path / "new" / "cache" / "cifar-10-python.tar.gz"  # Neither folder exists.
    digest = safe_files.sha256_of(tiny_archive)
    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.update(
            path=safe_files.download(slow_server["url"], destination, digest)
        ),
        daemon=True,
    )
    worker.start()
    try:
        # Until half is sent, or the download ended early (then the test fails at once).
        while worker.is_alive() and not slow_server["half_sent"].wait(0.01):
            pass
        assert slow_server["half_sent"].is_set(), "the download stopped before it began"
        (partial,) = destination.parent.iterdir()
        assert partial.name.endswith(".part") and not destination.exists()
    finally:
        slow_server["finish"].set()
        worker.join(10)
    assert done["path"] == destination and destination.read_bytes() == tiny_archive.read_bytes()
    assert list(destination.parent.iterdir()) == [destination]
    # tqdm counts bytes in thousands: "330k/330k" with a known length, "330kB" without.
    size = tqdm.tqdm.format_sizeof(tiny_archive.stat().st_size)
    shown = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    if length:
        assert re.fullmatch(rf"download: 100%\|█+\| {size}/{size} \[.*B/s\]", shown[-1]), shown
    else:  # No percentage at any point: the total is unknown, not 1 byte.
        assert re.fullmatch(rf"download: {size}B \[.*B/s\]", shown[-1]), shown
        assert not any("%" in line for line in shown), shown


def test_a_quiet_download_shows_no_progress(tiny_archive, tmp_path, capsys):
    destination = tmp_path / "cifar-10-python.tar.gz"
    digest = safe_files.sha256_of(tiny_archive)
    safe_files.download(tiny_archive.as_uri(), destination, digest, quiet=True)
    assert capsys.readouterr().err == ""


def test_failed_downloads_give_the_reason_not_the_exception(tiny_archive, tmp_path):
    missing = tmp_path / "absent.tar.gz"
    with pytest.raises(RunError) as error:
        safe_files.download(missing.as_uri(), tmp_path / "out.tar.gz", "0" * 64, quiet=True)
    # urllib's URLError prints as "<urlopen error ...>"; its reason is the sentence to show.
    assert f"No such file or directory: '{missing}')" in str(error.value)
    assert "urlopen error" not in str(error.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError) as error:  # An OSError has no reason: the error itself.
        safe_files.download(tiny_archive.as_uri(), tmp_path / "file" / "out.tar.gz", "0" * 64)
    assert f"([Errno 17] File exists: '{tmp_path / 'file'}')" in str(error.value)


def test_a_file_that_is_no_archive_is_refused_with_the_first_line_of_the_reason(
    tiny_archive, tmp_path
):
    notes = tmp_path / "notes.tar.gz"
    notes.write_text("# Notes\n\nnot an archive\n")
    # tarfile lists each compression it tried on a line of its own under the first.
    with pytest.raises(UserError) as error:
        safe_files.read_tar_members(notes, {"data_batch_1"})
    assert str(error.value).startswith(f"{notes} is not a readable tar archive (a text file")
    truncated = tmp_path / "cifar-10-python.tar.gz"
    truncated.write_bytes(tiny_archive.read_bytes()[:5000])
    with pytest.raises(UserError) as error:
        safe_files.read_tar_members(truncated, {"data_batch_1"})
    assert str(error.value) == (
        f"{truncated} is truncated or not a valid tar.gz archive (Compressed file ended before "
        "the end-of-stream marker was reached); download it again."
    )
    # A file tarfile cannot even open is named with the reason the system gave.
    with pytest.raises(UserError) as error:
        safe_files.read_tar_members(tmp_path, {"data_batch_1"})
    assert str(error.value) == (
        f"{tmp_path} cannot be read ([Errno 21] Is a directory: '{tmp_path}')."
    )
