"""Runner options are validated before any work: what a cluster run lacks is named."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import StandardOptions

from segment_run import run_cli
from simulforge.pipeline import runners
from simulforge.settings import ConfigError

REMOTE = {"input": "gs://b/raw", "output": "gs://b/out", "work_dir": "gs://b/work"}


def test_profiles_come_first_and_the_command_line_last():
    args = runners.beam_args("direct-mp", ["--direct_num_workers=4"], ["--direct_num_workers=2"])
    assert args[0] == "--runner=FnApiRunner" and args[-1] == "--direct_num_workers=2"
    with pytest.raises(ConfigError, match="known profiles are direct, direct-mp"):
        runners.beam_args("yarn", [], [])


def test_dataflow_without_temp_location_is_refused_with_its_name():
    args = runners.beam_args("dataflow", [], ["--project=p", "--sdk_container_image=img"])
    with pytest.raises(ConfigError, match=r"DataflowRunner needs --temp_location"):
        runners.validate(args, REMOTE)
    runners.validate([*args, "--temp_location=gs://b/tmp"], REMOTE)


def test_dataflow_needs_the_worker_code_and_gs_temp():
    base = ["--runner=DataflowRunner", "--project=p", "--region=r"]
    with pytest.raises(ConfigError, match="sdk_container_image"):
        runners.validate([*base, "--temp_location=gs://b/t"], REMOTE)
    with pytest.raises(ConfigError, match="needs a gs:// location"):
        runners.validate([*base, "--temp_location=/tmp/t", "--sdk_container_image=i"], REMOTE)


@pytest.mark.parametrize(("profile", "flag"), [("flink", "--flink_master"), ("spark", "--spark_master_url")])
def test_job_server_runners_name_their_master(profile, flag):
    with pytest.raises(ConfigError, match=flag):
        runners.validate(runners.beam_args(profile, [], []), REMOTE)


def test_cluster_runs_refuse_local_paths():
    args = runners.beam_args("flink", [], ["--flink_master=h:8081"])
    with pytest.raises(ConfigError, match="output=out"):
        runners.validate(args, {**REMOTE, "output": "out"})
    runners.validate(runners.beam_args("portable-embed", [], []), {"output": "out"})


def test_local_profiles_name_a_local_runner_and_not_the_downloading_default():
    for name in ("direct", "direct-mp"):
        options = runners.validate(runners.beam_args(name, [], []), {"output": "out", "work_dir": "w"})
        runner = options.view_as(StandardOptions).runner
        assert runner in runners.LOCAL_RUNNERS and runner != "DirectRunner", (name, runner)


@pytest.mark.parametrize("profile", ["direct", "direct-mp"])
def test_local_profiles_download_nothing_and_run_on_the_runner_they_name(profile, demo_root, tmp_path):
    """Beam's DirectRunner tries to download Prism from GitHub at every run; the child process
    records every lookup, connect and urllib request to another host, and the runner it ran on."""
    home = tmp_path / "home"
    home.mkdir()
    argv = ["curate", "--input", demo_root, "--output", tmp_path / "out", "--work-dir", tmp_path / "work",
            "--langs", "de", "--corpora", "mustc", "--runner-profile", profile,
            "--set", "configs=[offline]", "--set", "embed.enabled=false"]
    proc, seen = run_cli(argv, tmp_path / "seen.json", cwd=tmp_path, env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seen["network"] == []
    named = next(a.split("=", 1)[1] for a in runners.profiles()[profile] if a.startswith("--runner="))
    assert seen["runners"] == [named]
    assert "Prism" not in proc.stderr
    assert not (home / ".apache_beam").exists()


def test_unknown_beam_flags_are_refused_with_beam_s_closest_flag():
    """Beam only logs "Unparseable argument" and runs without the flag; we refuse it before any work."""
    fine = ["--runner=FnApiRunner", "--direct_num_workers=2", "--job_endpoint", "embed", "--save_main_session",
            *runners.beam_args("dataflow", [], ["--project=p", "--temp_location=gs://b/t"])]
    assert runners.unknown_flags(fine) == []
    assert runners.unknown_flags(["--direct_num_worker=2", "--foo_bar=1", "--flink_mastr", "h", "stray"]) == [
        "--direct_num_worker=2 (did you mean --direct_num_workers?)", "--foo_bar=1 (no Beam option has this name)",
        "--flink_mastr (did you mean --flink_master?)", "stray (not a --flag=value)"]
    with pytest.raises(ConfigError, match=r"^unknown Beam flag: --direct_num_worke=2 \(did you mean --direct_num_workers\?\)$"):
        runners.validate(runners.beam_args("direct-mp", [], ["--direct_num_worke=2"]), {"output": "out"})


def test_the_external_worker_pool_profile_names_its_pool_and_refuses_local_paths():
    """portable-external's workers run where the pool runs: they see no local path and no progress folder."""
    args = runners.beam_args("portable-external", [], [])
    with pytest.raises(ConfigError, match=r"PortableRunner needs --environment_config=HOST:PORT"):
        runners.validate(args, REMOTE)
    args.append("--environment_config=127.0.0.1:50000")
    options = runners.validate(args, {**REMOTE, "input": "s3://b/raw"})
    assert not runners.local_workers(options)
    with pytest.raises(ConfigError, match="work_dir=work must be on shared storage"):
        runners.validate(args, {**REMOTE, "work_dir": "work"})
    # An embedded job server with workers in this process still reads local paths.
    assert runners.local_workers(runners.validate(runners.beam_args("portable-embed", [], []), {"output": "out"}))


def test_credential_flags_are_redacted_in_what_a_run_records():
    args = ["--s3_endpoint_url=http://127.0.0.1:9000", "--s3_secret_access_key=SeCrEt", "--s3_access_key_id", "AKID",
            "--s3_session_token=tok", "--runner=PortableRunner"]
    shown = runners.redacted(args)
    assert shown == ["--s3_endpoint_url=http://127.0.0.1:9000", "--s3_secret_access_key=<redacted>", "--s3_access_key_id",
                     "<redacted>", "--s3_session_token=<redacted>", "--runner=PortableRunner"]
    assert runners.unknown_flags(args) == []
