"""What a `simulforge` command prints and keeps: the console filter per verbosity, the log file that
starts with what came before it, a worker subprocess's raw stderr sent to that file, and the resolved
settings a build ships, without secrets."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from simulforge.pipeline import logs


@pytest.fixture
def clean_logging():
    """The root logger as the test found it, whatever `logs.setup` did to it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {name: logging.getLogger(name).level for name in ("simulforge", "chatty", "asked")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in named.items():
        logging.getLogger(name).setLevel(value)
    logs.pause_while_printing(None)


def _emit(capsys) -> str:
    logging.getLogger("simulforge.curate").info("ours at info")
    logging.getLogger("simulforge.curate").debug("ours at debug")
    logging.getLogger("chatty").info("theirs at info")
    logging.getLogger("chatty").warning("theirs at warning")
    logging.getLogger("asked.deep").debug("theirs at debug, asked for")  # its parent was asked
    logging.getLogger("apache_beam").warning("apitools not found, and bigquery client libraries are not available")
    return capsys.readouterr().err


@pytest.mark.parametrize(("verbosity", "shown"), [
    (logs.QUIET, ["WARNING chatty: theirs at warning", "DEBUG asked.deep: theirs at debug, asked for"]),
    (logs.NORMAL, ["ours at info", "WARNING chatty: theirs at warning", "DEBUG asked.deep: theirs at debug, asked for"]),
    (logs.VERBOSE, ["ours at info", "INFO chatty: theirs at info", "WARNING chatty: theirs at warning",
                    "DEBUG asked.deep: theirs at debug, asked for"]),
    (logs.DEBUG, ["ours at info", "DEBUG simulforge.curate: ours at debug", "INFO chatty: theirs at info",
                  "WARNING chatty: theirs at warning", "DEBUG asked.deep: theirs at debug, asked for"]),
])
def test_the_console_shows_simulforge_s_lines_and_other_libraries_from_warning(verbosity, shown, capsys,
                                                                                clean_logging):
    logs.setup(verbosity)
    logging.getLogger("asked").setLevel(logging.DEBUG)  # a caller turned this one up by name
    assert _emit(capsys).splitlines() == shown


def test_the_log_file_holds_everything_from_info_with_what_came_before_it(tmp_path, capsys, clean_logging):
    logs.setup(logs.NORMAL, keep=True)
    logging.getLogger("chatty").info("before the file")
    logs.echo("a line of the run")
    path = tmp_path / "logs" / "run.log"
    with logs.to_file(str(path)):
        logging.getLogger("chatty").info("during")
        logging.getLogger("chatty").debug("below info")
    logging.getLogger("chatty").info("after")
    text = path.read_text()
    assert [line.split(" ", 2)[2] for line in text.splitlines()] == [
        "INFO chatty: before the file", "INFO simulforge.echo: a line of the run", "INFO chatty: during"]
    assert capsys.readouterr() == ("a line of the run\n", "")  # echoed once, on stdout


def test_a_child_s_raw_stderr_goes_to_the_log_file_and_ours_stays_on_the_console(tmp_path, clean_logging):
    """In a child with a real stderr: a grandchild process writing to its inherited stderr (as Beam's
    worker subprocesses do) ends up in the log file; the process's own console log does not."""
    code = f"""
import logging, subprocess, sys
from simulforge.pipeline import logs
logs.setup(logs.NORMAL, keep=True)
with logs.to_file({str(tmp_path / 'run.log')!r}):
    with logs.raw_stderr_to_file():
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('INFO:worker:started\\\\n')"])
        logging.getLogger("simulforge.curate").warning("ours during")
    sys.stderr.write("ours after\\n")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["WARNING simulforge.curate: ours during", "ours after"]
    text = (tmp_path / "run.log").read_text()
    assert "INFO:worker:started" in text and "WARNING simulforge.curate: ours during" in text


def test_the_resolved_settings_load_back_and_hold_no_secret(monkeypatch, tmp_path):
    """A key pasted into a setting and a password in a URL are redacted; the LLM key's variable name
    (not its value) is what the settings hold."""
    from simulforge.pipeline import config
    from simulforge.pipeline.curate import resolved_config

    key = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    settings = config.load(overrides=[f"work_dir={tmp_path}", "segment.llm.base_url=http://me:pa55word@127.0.0.1:9/v1",
                                      f"corpus.mustc.path=/data/{key}/mustc"])
    text = resolved_config(settings, ["--direct_num_workers=2"])
    assert key not in text and key[:12] not in text and "pa55word" not in text
    assert "http://me:[redacted]@127.0.0.1:9/v1" in text and "/data/[redacted]" in text
    assert "api_key_env: OPENAI_API_KEY" in text

    clean = config.load(overrides=[f"work_dir={tmp_path}", "seed=5", "beam_args=[--direct_running_mode=in_memory]"])
    path = tmp_path / "curate.yaml"
    path.write_text(resolved_config(clean, ["--direct_num_workers=2"]))
    again = config.load(str(path))
    assert again.fingerprint() == clean.fingerprint() and again.seed == 5
    assert again.beam_args == ["--direct_running_mode=in_memory", "--direct_num_workers=2"]
    assert again.output == clean.output == "out" and again.work_dir == str(tmp_path)


def test_what_a_build_ships_does_not_depend_on_where_it_ran(tmp_path):
    """The portable form leaves out the output, the work dir and what was derived from it (the demo
    input, its truth file, the caches): two runs of one config into two places ship the same file,
    which gives the first run's config hash again with its work dir. (The hash covers the input path:
    runs on the demo corpora of two work dirs differ in it, as their cards do.)"""
    from simulforge.pipeline import config
    from simulforge.pipeline.curate import resolved_config

    def settings(where: str, *more: str):
        return config.load(overrides=[f"work_dir={tmp_path / where}", f"output={tmp_path / where / 'out'}",
                                      "overwrite=true", *more])

    demo = resolved_config(settings("a"), [], portable=True)
    assert "\ninput: null\n" in demo and "  truth: null\n" in demo and str(tmp_path) not in demo
    one, two = settings("a", "input=/data/raw"), settings("b", "input=/data/raw")
    shipped = resolved_config(one, [], portable=True)
    assert shipped == resolved_config(two, [], portable=True) and str(tmp_path) not in shipped
    path = tmp_path / "curate.yaml"
    path.write_text(shipped)
    again = config.load(str(path), [f"work_dir={tmp_path / 'a'}"])
    assert again.fingerprint() == one.fingerprint() and again.segment.align.cache_dir == one.segment.align.cache_dir
    assert not again.overwrite  # replacing a build is asked for each time
    given = settings("a", f"segment.align.cache_dir={tmp_path}/eflomal")  # given, not derived: kept
    assert f"cache_dir: {tmp_path}/eflomal" in resolved_config(given, [], portable=True)
