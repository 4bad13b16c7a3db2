"""Beam options from the config: runner profiles, validation before any work, cluster checks.

The same graph runs everywhere; what differs is the flags. A cluster run needs its runner's
required options and storage every worker can reach (no local paths for input, output or
the work directory), and we say which is missing before the pipeline is built.
"""

from __future__ import annotations

import difflib
from importlib import resources

import yaml
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    SparkRunnerOptions,
    StandardOptions,
    WorkerOptions,
    _BeamArgumentParser,
)

from ..settings import ConfigError

# Runners that run in this process or beside it and can read local paths: Beam's own list
# (the direct profiles name FnApiRunner; see configs/runners.yaml for why not DirectRunner).
LOCAL_RUNNERS = frozenset(StandardOptions.LOCAL_RUNNERS)


def profiles() -> dict[str, list[str]]:
    return yaml.safe_load(resources.files("simulforge.configs").joinpath("runners.yaml").read_text())


def beam_args(profile: str | None, config_args: list[str], cli_args: list[str]) -> list[str]:
    known = profiles()
    if profile is not None and profile not in known:
        raise ConfigError(f"runner profile {profile!r}: known profiles are {', '.join(known)}")
    return [*(known[profile] if profile else []), *config_args, *cli_args]


def _runner(options: PipelineOptions) -> str:
    name = options.view_as(StandardOptions).runner or "DirectRunner"
    return name if isinstance(name, str) else type(name).__name__


def unknown_flags(args: list[str]) -> list[str]:
    """The items of `args` that no Beam option takes, each with Beam's closest flag where it has one.

    Beam itself only logs "Unparseable argument" and runs without them; the parser is the one Beam
    builds for that check (every PipelineOptions subclass, no abbreviations).
    """
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    known = [flag for action in parser._actions for flag in action.option_strings]
    _, unknown = parser.parse_known_args(args)
    out, after_flag = [], False
    for item in unknown:
        if not item.startswith("-"):
            if not after_flag:  # a value of the unknown flag before it is no second problem
                out.append(f"{item} (not a --flag=value)")
            after_flag = False
            continue
        name = item.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1)
        out.append(f"{item} (did you mean {close[0]}?)" if close else f"{item} (no Beam option has this name)")
        after_flag = "=" not in item
    return out


def validate(args: list[str], paths: dict[str, str | None]) -> PipelineOptions:
    """PipelineOptions for `args`, or a ConfigError naming an unknown flag or what a runner still needs.

    `paths` are the folders the run reads and writes ({"output": ..., "work_dir": ...}).
    """
    unknown = unknown_flags(args)
    if unknown:
        raise ConfigError(f"unknown Beam flag{'s' if len(unknown) > 1 else ''}: {'; '.join(unknown)}")
    options = PipelineOptions(args)
    runner = _runner(options)
    missing: list[str] = []
    if runner == "DataflowRunner":
        gcp = options.view_as(GoogleCloudOptions)
        missing += [f"--{k}" for k in ("project", "region", "temp_location") if not getattr(gcp, k)]
        if gcp.temp_location and not gcp.temp_location.startswith("gs://"):
            raise ConfigError(f"--temp_location: Dataflow needs a gs:// location, got {gcp.temp_location}")
        worker, setup = options.view_as(WorkerOptions), options.view_as(SetupOptions)
        if not (worker.sdk_container_image or setup.extra_packages or setup.setup_file):
            missing.append("--sdk_container_image (the image built from the Dockerfile) or "
                           "--extra_package=dist/simulforge-*.tar.gz")
    elif runner == "FlinkRunner":
        # "[auto]"/"[local]" would start a Flink of its own: a download that cluster users do not want.
        if options.view_as(FlinkRunnerOptions).flink_master in (None, "", "[auto]", "[local]"):
            missing.append("--flink_master=HOST:PORT")
    elif runner == "SparkRunner":
        spark = options.view_as(SparkRunnerOptions).get_all_options(drop_default=True)
        if not spark.get("spark_master_url"):
            missing.append("--spark_master_url=spark://HOST:7077")
    elif runner == "PortableRunner":
        portable = options.view_as(PortableOptions)
        if not portable.job_endpoint:
            missing.append("--job_endpoint=HOST:PORT (or embed)")
        if portable.environment_type == "EXTERNAL" and not portable.environment_config:
            missing.append("--environment_config=HOST:PORT (the worker pool: python -m "
                           "apache_beam.runners.worker.worker_pool_main --container_executable=simulforge-worker)")
    if missing:
        raise ConfigError(f"{runner} needs {', '.join(missing)}")
    if not local_workers(options):
        local = {k: v for k, v in paths.items() if v and "://" not in v}
        if local:
            raise ConfigError(f"{runner} runs on workers that cannot see this machine's disk: "
                              + ", ".join(f"{k}={v}" for k, v in local.items())
                              + " must be on shared storage (gs://, s3://, hdfs://)")
    return options


def local_workers(options: PipelineOptions) -> bool:
    """Whether the runner's workers run on this machine, in or beside this process (and so can read its
    paths and write the progress events)."""
    if (options.view_as(PortableOptions).environment_type or "").upper() in REMOTE_ENVIRONMENTS:
        return False
    return _runner(options) in LOCAL_RUNNERS or _is_embedded(options)


# SDK workers that the runner starts elsewhere, sharing nothing with this process but storage.
REMOTE_ENVIRONMENTS = frozenset({"EXTERNAL", "DOCKER"})


def _is_embedded(options: PipelineOptions) -> bool:
    """A job server in this process whose workers run here too (not a worker pool or container)."""
    portable = options.view_as(PortableOptions)
    if (portable.environment_type or "").upper() in REMOTE_ENVIRONMENTS:
        return False
    return portable.job_endpoint == "embed" or portable.environment_type == "LOOPBACK"


# Flags whose values are credentials: kept out of stats.json, curate.yaml and the log.
SECRET_FLAGS = ("--s3_access_key_id", "--s3_secret_access_key", "--s3_session_token")
REDACTED = "<redacted>"


def redacted(args: list[str]) -> list[str]:
    """`args` with the value of every credential flag replaced (as --flag=value or --flag value)."""
    out, hide_next = [], False
    for arg in args:
        name = arg.split("=", 1)[0]
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
        elif name in SECRET_FLAGS:
            out.append(f"{name}={REDACTED}" if "=" in arg else arg)
        else:
            out.append(arg)
        hide_next = name in SECRET_FLAGS and "=" not in arg
    return out
