"""The command line as a user meets it, in real subprocesses: quiet start-up, one-sentence
errors answered before TensorFlow loads, useful help, plain output when not on a terminal, and a
busy port refused up front."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

# Calls the CLI in-process, then says whether TensorFlow or Keras was imported on the way.
IMPORTS_SCRIPT = """
import sys
from cifarlab import cli
code = cli.main(sys.argv[1:])
print(code, "tensorflow" in sys.modules, "keras" in sys.modules)
"""
NOISE = ("absl", "onednn", "cuda", "cudnn", "retracing", "warning", "tensorflow")


def user_environment() -> dict[str, str]:
    """The test's environment without the TensorFlow log setting a user would not have set."""
    environment = dict(os.environ)
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return environment


def cifarlab(*arguments: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`cifarlab ARGUMENTS` with its output piped, as under nohup or in CI."""
    command = [sys.executable, "-m", "cifarlab.cli", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, env=env or user_environment())


def options_without_help(help_text: str) -> list[str]:
    """The options and arguments in `--help` output that have no explanation beside or below."""
    lines = help_text.splitlines() + [""]
    return [
        line.split()[0]
        for line, following in zip(lines, lines[1:], strict=False)
        if re.match(r"  [-\w]", line)
        and not re.search(r"\S {2,}\S", line.strip())
        and not following.startswith(" " * 8)
    ]


def assert_one_sentence(stderr: str) -> str:
    """The error is one line: `cifarlab: ` and a capitalised sentence ending in a full stop."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert re.fullmatch(r"cifarlab: [A-Z].*\.", lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cli_run(tiny_archive, tmp_path_factory):
    """`cifarlab train` for two epochs with stdout piped: the finished process and its folder."""
    out = tmp_path_factory.mktemp("cli") / "baseline"
    # Module-scoped, so set up before conftest's per-test cache: point at the same one here.
    cache = {"XDG_CACHE_HOME": str(tmp_path_factory.getbasetemp() / "cache")}
    result = cifarlab("train", "baseline", "--data", tiny_archive, "--out", out, "--epochs", "2",
                      "--precision", "float32", env={**user_environment(), **cache})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result, out


def test_training_says_nothing_on_stderr(cli_run):
    result, _ = cli_run
    noisy = [line for line in result.stderr.splitlines() if line.lower().startswith(NOISE)]
    assert result.stderr == "", noisy or result.stderr


def test_piped_training_prints_one_plain_line_per_epoch(cli_run):
    result, out = cli_run
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout and "\b" not in result.stdout
    epoch_lines = [line for line in result.stdout.splitlines() if "val_loss" in line]
    assert len(epoch_lines) == 2, result.stdout
    assert f"Run folder: {out}" in result.stdout


def test_verbose_still_evaluates_before_or_after_the_command(cli_run, tiny_archive):
    _, out = cli_run
    after = cifarlab("evaluate", out, "--data", tiny_archive, "--verbose")
    assert after.returncode == 0, after.stderr
    assert re.search(r"^test\s", after.stdout, re.MULTILINE), after.stdout
    before = cifarlab("--verbose", "data", "info", "--data", tiny_archive)
    assert before.returncode == 0, before.stderr
    assert "airplane" in before.stdout


def test_a_light_command_is_quiet_too(tiny_archive):
    result = cifarlab("data", "info", "--data", tiny_archive)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["train", "nosuch"], "Unknown experiment 'nosuch'"),
        (["train", "baseline", "--image-size", "100000"], "image_size must lie between 8 and 512"),
        (["train", "baseline", "--data", "/nonexistent"], "Data path /nonexistent does not exist"),
        (["evaluate", "/nonexistent"], "/nonexistent does not exist"),
        (["predict", "/nonexistent-run", "x.jpg"], "/nonexistent-run does not exist"),
        (["predict", "{run}", "/nonexistent.jpg"], "/nonexistent.jpg does not exist"),
        (["study", "--data", "/nonexistent"], "/nonexistent does not exist"),
        (["study", "--experiments", "baseline,dropout"], "Unknown experiment 'dropout'"),
        (["serve", "/nonexistent"], "/nonexistent does not exist"),
        (["report", "/nonexistent"], "/nonexistent does not exist"),
    ],
)
def test_bad_input_is_one_sentence_before_tensorflow_loads(arguments, expected, tmp_path):
    (tmp_path / "run").mkdir()
    arguments = [argument.format(run=tmp_path / "run") for argument in arguments]
    command = [sys.executable, "-c", IMPORTS_SCRIPT, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=user_environment())
    assert result.stdout.split() == ["2", "False", "False"], result.stdout + result.stderr
    assert expected in assert_one_sentence(result.stderr)


@pytest.mark.parametrize("content", [b"# Notes\n\nnot an archive\n", b"\x1f\x8b\x08\x00cut short"])
def test_a_file_that_is_no_archive_is_one_line_naming_it(content, tmp_path):
    data = tmp_path / "notes.tar.gz"
    data.write_bytes(content)
    result = cifarlab("data", "info", "--data", data)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # tarfile's own error lists each compression it tried, one per line: none of that here.
    assert result.stderr.splitlines() == [
        f"cifarlab: {data} is not a readable tar archive (a text file, or one cut short); --data "
        "takes the official cifar-10-python.tar.gz, its extracted folder, a folder of class "
        "folders or a .tar.gz of one."
    ]


def test_a_busy_port_is_refused_before_the_models_load(cli_run):
    _, out = cli_run
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cifarlab("serve", out, "--port", port)
    assert result.returncode == 2 and result.stdout == ""
    assert assert_one_sentence(result.stderr) == (
        f"cifarlab: Port {port} on 127.0.0.1 is already in use; choose another with --port."
    )


def test_argument_errors_read_as_one_sentence_without_internal_names():
    result = cifarlab("train", "baseline", "--epochs", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        "cifarlab train: argument --epochs: expected a positive whole number, got 0 "
        "(see cifarlab train --help).\n"
    )
    for arguments in (["data", "nosuch"], ["train", "baseline", "--epochs", "many"]):
        result = cifarlab(*arguments)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "data_command" not in result.stderr and "positive_int" not in result.stderr


def test_help_shows_defaults_and_explains_every_option():
    train = cifarlab("train", "--help")
    assert train.returncode == 0
    text = " ".join(train.stdout.split())  # Help wraps lines wherever the terminal width says.
    assert "--seed SEED seed for the validation split, weights and shuffling (default: 0)" in text
    assert "(default: 0.2)" in text and "$XDG_CACHE_HOME/cifarlab" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    for command in ("train", "evaluate", "sweep", "study", "predict", "serve", "report"):
        help_text = cifarlab(command, "--help").stdout
        assert "--verbose" in help_text  # The help is really read.
        assert not options_without_help(help_text), command
    assert "(default: 3)" in cifarlab("predict", "--help").stdout
    assert "(default: 8000)" in cifarlab("serve", "--help").stdout
    data = cifarlab("data", "--help").stdout
    assert "data_command" not in data and "info" in data


def test_bare_command_lists_the_commands_and_version_prints():
    bare = cifarlab()
    assert bare.returncode == 0 and bare.stderr == ""
    assert "train" in bare.stdout and "serve" in bare.stdout and "examples:" in bare.stdout
    assert "error" not in bare.stdout.lower()
    version = cifarlab("--version")
    assert version.returncode == 0 and version.stdout == "cifarlab 0.1.0\n"
