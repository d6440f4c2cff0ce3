"""What the command line checks and sets up before the work starts: input that can be checked
cheaply (paths, the output folder, the port) is checked before TensorFlow loads, so a typo is
answered in well under a second; TensorFlow's start-up chatter is kept off the screen; and a
failed read or write becomes one sentence. Only `cli` uses these.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from cifarlab.errors import UserError


def check_exists(path: Path | str | None, what: str, remedy: str) -> None:
    if path is not None and not Path(path).expanduser().exists():
        raise UserError(f"{what} {path} does not exist; {remedy}.")


def check_data(args: argparse.Namespace) -> None:
    path = args.data or os.environ.get("CIFARLAB_DATA") or None
    check_exists(path, "Data path", "pass an existing archive or folder")


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on now, rather than after the models load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # As the server itself binds.
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(
                    f"Port {port} on {host} is already in use; choose another with --port."
                ) from error
            raise UserError(
                f"Cannot listen on {host} port {port} ({error.strerror or error}); "
                "choose another --host or --port."
            ) from error


def check_output_folder(path: Path | None, flag: str = "--out") -> None:
    """Refuse a folder that cannot be written (a file, a read-only place) before any work."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"The {flag} folder {path} is a file; choose a folder.")
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise UserError(
            f"The {flag} folder {path} lies inside the file {existing}; choose a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"The {flag} folder {path} cannot be written ({existing} is read-only); "
                        "choose another folder.")  # fmt: skip


def os_error_sentence(error: OSError) -> str:
    """One sentence for a failed read or write, saying what to do."""
    reason = error.strerror or str(error).splitlines()[0]
    where = f" {error.filename}" if error.filename else ""
    if error.errno == errno.ENOSPC or "No space left" in str(error):
        reason = "no space left on the device"
    return (
        f"Could not read or write{where} ({reason}); make room or choose another folder, then "
        "rerun the same command: finished work is kept and training resumes."
    )


def quiet_tensorflow(verbose: bool) -> None:
    """Load Keras now, keeping TensorFlow's start-up chatter and warnings off the screen.

    TF_CPP_MIN_LOG_LEVEL quiets TensorFlow's own C++ log, but the CUDA probes and the oneDNN
    notice are written by absl before its logging is set up, straight to file descriptor 2,
    so that descriptor points at /dev/null while TensorFlow is imported. Retracing warnings
    come later, through TensorFlow's Python logger. `verbose` leaves all of it on.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                import keras  # noqa: F401  Imports the backend, TensorFlow by default.
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    import keras

    if keras.backend.backend() == "tensorflow":
        import absl.logging
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)
        absl.logging.set_verbosity(absl.logging.ERROR)


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (a `kill`, a scheduler's stop) ends the command as Ctrl-C does: partial files
    are removed on the way out and the rerun resumes. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
