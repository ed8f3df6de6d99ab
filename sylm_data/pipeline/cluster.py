"""Ray cluster jobs: a `sylm-data` command submitted through the Ray Jobs API, followed, queried, stopped.

The job runs the same CLI as a local run (`sylm-data run …`) on the cluster, whose image (or the
`pip` runtime environment) provides the package. Ray's token authentication is handled as Ray's
own tools do: the token comes from `RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`,
else `~/.ray/auth_token`, and is sent as a bearer token.
"""

import asyncio
import os
import shlex
import time
from pathlib import Path

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
UPLOAD_EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "out"]
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


class ClusterError(RuntimeError):
    pass


def auth_token() -> tuple[str | None, str]:
    """(token or None, where it was looked for)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), str(path)
    return None, f"RAY_AUTH_TOKEN or {path}"


def connect(address: str):
    """A JobSubmissionClient for the dashboard at `address`; unreachable or unauthorised is a ClusterError."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token, where = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as error:
        if token is None:
            raise ClusterError(f"the Ray cluster at {address} requires an auth token and none was found "
                               f"(looked in {where}): set RAY_AUTH_TOKEN to the cluster's token") from None
        raise ClusterError(f"the Ray cluster at {address} refused the token from {where}: "
                           f"{str(error).strip().splitlines()[0]}") from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot reach the Ray dashboard at {address}: {str(error).strip().splitlines()[0]}") from None


def runtime_env(working_dir: str | None, pip: list[str], env_vars: dict[str, str]) -> dict:
    environment: dict = {}
    if working_dir:
        environment["working_dir"] = str(Path(working_dir).resolve())
        environment["excludes"] = UPLOAD_EXCLUDES
    if pip:
        environment["pip"] = list(pip)
    if env_vars:
        environment["env_vars"] = dict(env_vars)
    return environment


def entrypoint(command: list[str]) -> str:
    """The job's shell command: the same CLI as a local run."""
    if not command:
        raise ClusterError("nothing to submit: give the command after --, e.g. -- run --stage ingest -o out")
    return shlex.join(["sylm-data", *command])


def submit(client, command: list[str], working_dir: str | None = None, pip: list[str] = (),
           env_vars: dict[str, str] | None = None, job_id: str | None = None, agent_wait_s: float = 60) -> str:
    """Submit; a head that has just started answers "no available agent" until its job agent is up, so wait for it."""
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint(command),
                                     runtime_env=runtime_env(working_dir, list(pip), env_vars or {}), submission_id=job_id)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def follow(client, job_id: str, write) -> str:
    """Stream the job's logs through `write` until it finishes; returns its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())
    return status(client, job_id)


def status(client, job_id: str) -> str:
    return str(client.get_job_status(job_id).value)
