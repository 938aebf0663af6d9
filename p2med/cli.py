"""`p2med`: one command, a subcommand per job.

    p2med --help                       the jobs
    p2med <job> --help                 that job's config keys, types and defaults
    p2med <job> [--config FILE] [key=value ...]

`--config` takes a YAML path, or a name under the packaged configs that this module hands
down to the config loading (`synth/small.yaml` is p2med/configs/synth/small.yaml).
Overrides use dotted keys for nested configs (`storage.region=eu-west-1`); `--key VALUE`
is accepted for a top-level key (`--out data/raw`), `--no-key` for a top-level switch
(`--no-serve`). Bad input ends with one line on stderr and a non-zero exit code, never a
traceback.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from p2med import configs
from p2med.platform.config import describe_fields, load_config
from p2med.platform.errors import ConfigError, P2MedError
from p2med.platform.ray_runtime import use_local_ray_env


@dataclass(frozen=True)
class Job:
    name: str
    module: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def summary(self) -> str:
        doc = self.load().__doc__ or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


JOBS = {
    job.name: job
    for job in [
        Job("synth", "p2med.jobs.synth"),
        Job("ingest", "p2med.jobs.ingest"),
        Job("train", "p2med.jobs.train"),
        Job("eval", "p2med.jobs.eval"),
        Job("serve", "p2med.jobs.serve"),
        Job("quickstart", "p2med.jobs.quickstart"),
    ]
}
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    use_local_ray_env()  # before a job imports Ray Serve
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except P2MedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(_main_help())
        return 0
    name, rest = args[0], args[1:]
    if name not in JOBS:
        raise ConfigError(f"unknown job {name!r}; jobs: {', '.join(JOBS)} (see p2med --help)")
    module = JOBS[name].load()
    if any(a in ("-h", "--help") for a in rest):
        print(_job_help(name, module))
        return 0
    module.run(job_config(module, name, rest))
    return 0


def job_config(module: ModuleType, name: str, args: list[str]) -> Any:
    """The typed config of job `name` from its command-line arguments (validated)."""
    config_file, overrides = _split_args(name, args, module.JobSettings)
    return load_config(module.JobSettings, config_file, overrides, packaged=configs.FOLDER)


def _split_args(job: str, args: list[str], config_cls) -> tuple[str | None, list[str]]:
    """Separate `--config FILE` from overrides; turn `--key VALUE` into `key=VALUE`."""
    config_file, overrides, i = None, [], 0
    top_level = set(config_cls.model_fields)
    while i < len(args):
        arg = args[i]
        flag = arg[5:].replace("-", "_") if arg.startswith("--no-") else ""
        if flag in top_level:
            if config_cls.model_fields[flag].annotation not in (bool, "bool"):
                raise ConfigError(f"option {arg}: {flag} is not a true/false key; use {flag}=VALUE")
            overrides.append(f"{flag}=false")  # --no-serve
        elif arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"option {arg} needs a value")
                value, i = args[i + 1], i + 1
            if key == "config":
                config_file = value
            elif key.replace("-", "_") in top_level:
                overrides.append(f"{key.replace('-', '_')}={value}")
            else:
                raise ConfigError(f"unknown option {arg} for p2med {job}; overrides are key=value")
        else:
            overrides.append(arg)
        i += 1
    return config_file, overrides


def _main_help() -> str:
    width = max(len(n) for n in JOBS)
    jobs = "\n".join(f"  {name:<{width}}  {job.summary()}" for name, job in JOBS.items())
    return (
        "usage: p2med <job> [--config FILE] [key=value ...]\n\n"
        "P2Med platform: train and serve a medical multimodal LLM on Ray.\n\n"
        f"jobs:\n{jobs}\n\n"
        "p2med <job> --help lists the job's config keys with their types and defaults."
    )


def _job_help(name: str, module: ModuleType) -> str:
    rows = describe_fields(module.JobSettings)
    key_w = max(len(r[0]) for r in rows)
    type_w = max(len(r[1]) for r in rows)
    lines = [f"  {k:<{key_w}}  {t:<{type_w}}  default {d}\n  {'':<{key_w}}  {desc}" for k, t, d, desc in rows]
    return (
        f"usage: p2med {name} [--config FILE] [key=value ...]\n\n"
        f"{(module.__doc__ or '').strip()}\n\n"
        "config keys (nested keys are dotted):\n" + "\n".join(lines)
    )


if __name__ == "__main__":
    sys.exit(main())
