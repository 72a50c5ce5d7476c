"""Whether a tracking server answers, speaks MLflow's API and takes the credentials MLflow's
client would send. Plain HTTP: no MLflow import."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request

from mnist.errors import TrackingError


def _get(uri: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """(HTTP status, body) of GET `path`, or POST `body` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{uri.rstrip('/')}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    if user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        login = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(login).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError) as e:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable "
            f"({getattr(e, 'reason', e)}); start it (make server) or unset "
            "MLFLOW_TRACKING_URI"
        ) from e


def _check_may_create_runs(uri: str, experiment: str) -> None:
    """MLflow's API lets no user read their own permission, so a run is created with an
    invalid start time: the server checks the permission first (403), then refuses the
    request (400), and nothing is created. A new experiment is the user's to create."""
    name = urllib.parse.quote(experiment)
    status, body = _get(uri, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")
    if status != 200:
        return
    experiment_id = json.loads(body)["experiment"]["experiment_id"]
    probe = {"experiment_id": experiment_id, "start_time": "not-a-time"}
    if _get(uri, "/api/2.0/mlflow/runs/create", probe)[0] == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise TrackingError(
            f"MLflow tracking server {uri} does not let user {user!r} add runs to experiment "
            f"{experiment!r}: ask its owner for EDIT permission, or set logger.experiment to "
            "an experiment of your own"
        )


def _refused_credentials(uri: str, status: int) -> str:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    fix = (
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or give them in the URI "
        "(http://user:password@host)"
    )
    if status == 403:
        return f"MLflow tracking server {uri} does not let user {user!r} read experiments"
    if user is None:
        return f"MLflow tracking server {uri} asks for credentials (HTTP 401): {fix}"
    return f"MLflow tracking server {uri} refused the password of user {user!r} (HTTP 401): {fix}"


def check_server(uri: str, experiment: str | None = None) -> None:
    """The server answers /health, then MLflow's API: any web server may have a /health,
    and MLflow's client fails on one that is no tracking server with a long traceback."""
    path = "/health"
    status, _ = _get(uri, path)
    if status == 200:
        # A read any tracking server answers with its JSON (the error RESOURCE_DOES_NOT_EXIST).
        path = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mnist-store-check"
        status, body = _get(uri, path)
        if status in (401, 403):
            raise TrackingError(_refused_credentials(uri, status))
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and {"experiment", "error_code"} & answer.keys():
            if experiment is not None:
                _check_may_create_runs(uri, experiment)
            return
    raise TrackingError(
        f"{uri} is not a working MLflow tracking server: GET "
        f"{path.partition('?')[0]} answered HTTP {status}"
        f"{'' if path == '/health' else ', not MLflow JSON'}; start one (make server) or "
        "set logger.tracking_uri / MLFLOW_TRACKING_URI to one"
    )
