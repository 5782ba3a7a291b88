"""``hepstream submit produce|train|serve`` and ``hepstream jobs list|status|logs|stop``: jobs on a Ray cluster.

Both talk to the cluster's job server (the head's dashboard port, 8265) with
the cluster's token (hepstream/ray_jobs.py); a refusal or an unreachable
server is one line on stderr and exit 3, as for an unreachable Kafka.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hepstream.config import ConfigError, load_config
from hepstream.job_paths import absolute_paths
from hepstream.ray_jobs import ClusterError, JobServer, job_server_address, job_spec

TOKEN_HELP = ("The cluster's token is read from RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or "
              "~/.ray/auth_token; `ray get-auth-token` on the head node prints it.")
# Exit status of `submit --follow` and `jobs logs --follow` by the job's final status.
EXIT_BY_STATUS = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 5}


def add_parser(subparsers) -> None:
    submit = subparsers.add_parser("submit", help="run produce, train or serve as a job on a Ray cluster",
                                   description=f"Run hepstream produce, train or serve as a job on a Ray cluster, "
                                               f"through its job server. {TOKEN_HELP}")
    submit.add_argument("job", choices=("produce", "train", "serve"))
    _address_argument(submit)
    submit.add_argument("--config", type=Path, default=os.environ.get("HEPSTREAM_CONFIG"),
                        help="pipeline YAML file (env HEPSTREAM_CONFIG); shipped with its relative paths made "
                             "absolute against its folder")
    submit.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the job and its actors (repeat; NAME alone takes this "
                             "shell's value); added to submit.env")
    submit.add_argument("--follow", action="store_true",
                        help="print the job's log until it ends; exit 0 if it succeeded, 1 if it failed, 5 if stopped")
    submit.set_defaults(run=run_submit)

    jobs = subparsers.add_parser("jobs", help="list, inspect, read or stop the jobs of a Ray cluster",
                                 description=f"The jobs of a Ray cluster's job server. {TOKEN_HELP}")
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, run, text in (("list", run_list, "every job: id, status, what it runs"),
                            ("status", run_status, "one job's status and message"),
                            ("logs", run_logs, "one job's log (--follow: until it ends)"),
                            ("stop", run_stop, "SIGTERM, wait for the job to end, say whether it stopped cleanly")):
        action = actions.add_parser(name, help=text)
        _address_argument(action)
        if name != "list":
            action.add_argument("job_id")
        if name == "logs":
            action.add_argument("--follow", action="store_true")
        action.set_defaults(run=_answering(run))


def _address_argument(parser) -> None:
    parser.add_argument("--address", help="the cluster's job server, http://HEAD:8265 "
                                          "(env RAY_API_SERVER_ADDRESS or RAY_ADDRESS, as for `ray job`)")


def _answering(run):
    """A command that reports a :class:`ClusterError` as one line and exit 3."""
    def wrapped(args) -> int:
        try:
            return run(args, JobServer(job_server_address(args.address)))
        except ClusterError as error:
            print(f"hepstream {args.command}: {error}", file=sys.stderr)
            return 3
    return wrapped


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, has_value, value = pair.partition("=")
        if not has_value and name not in os.environ:
            raise ConfigError(f"--env {name}: not set in this shell; write --env {name}=VALUE")
        env[name] = value if has_value else os.environ[name]
    return env


def run_submit(args) -> int:
    if args.config is None:
        raise ConfigError("hepstream submit needs --config FILE (or HEPSTREAM_CONFIG): the pipeline the job runs")
    config, changes = absolute_paths(load_config(args.config), args.config.parent)
    for key, before, after in changes:
        print(f"hepstream submit: {key} {before!r} is relative, and the job runs in Ray's copy of its working dir: "
              f"sent as {after} (a shared filesystem at the same path on every node)", file=sys.stderr)
    env = _env(args.env)
    return _answering(lambda _, server: _submit(args, server, config, env))(args)


def _submit(args, server: JobServer, config, env: dict[str, str]) -> int:
    with tempfile.TemporaryDirectory(prefix="hepstream-submit-") as staging:
        spec = job_spec(args.job, config, args.config.parent.absolute(), Path(staging), env)
        job_id = server.submit(spec)  # uploads the working dir before it returns
    print(job_id, flush=True)
    print(f"hepstream submit: {args.job} is job {job_id} on {server.address}: `hepstream jobs logs {job_id} --follow`"
          f", `hepstream jobs stop {job_id}`", file=sys.stderr)
    if not args.follow:
        return 0
    status = server.follow(job_id)
    print(f"hepstream submit: job {job_id} {status}", file=sys.stderr)
    return EXIT_BY_STATUS.get(status, 1)


def run_list(args, server: JobServer) -> int:
    for job in sorted(server.list(), key=lambda job: job.start_time or 0):
        print(f"{job.submission_id or job.job_id}\t{job.status}\t{job.entrypoint}")
    return 0


def run_status(args, server: JobServer) -> int:
    info = server.info(args.job_id)
    print(f"{args.job_id}\t{info.status}\t{info.message or ''}")
    return 0


def run_logs(args, server: JobServer) -> int:
    if args.follow:
        return EXIT_BY_STATUS.get(server.follow(args.job_id), 1)
    print(server.logs(args.job_id), end="")
    return 0


def run_stop(args, server: JobServer) -> int:
    """Exit 0 when the job ended on its own terms (its log says so), 1 when Ray had to SIGKILL it or it failed."""
    grace_s = server.grace_s(args.job_id)
    status, clean = server.stop(args.job_id, grace_s)
    if clean:
        print(f"hepstream jobs: job {args.job_id} {status}: it stopped cleanly within its {grace_s:g} s grace")
        return 0
    print(f"hepstream jobs: job {args.job_id} {status}, but its log does not say it stopped cleanly: it ended "
          f"before the stop, failed, or outlived its {grace_s:g} s grace and Ray SIGKILLed it "
          "(submit.stop_grace_s sets the grace)", file=sys.stderr)
    return 1
