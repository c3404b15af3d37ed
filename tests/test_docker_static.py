"""docker/ checked statically: no Docker engine (nor Compose plugin) runs here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _pyproject_specs() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        spec = dep.split(";")[0].strip()
        name = re.split(r"[<>=\[]", spec, maxsplit=1)[0].lower()
        out[name] = spec
    return out


def _pip_specs(dockerfile: DockerfileParser) -> list[str]:
    runs = " ".join(i["value"] for i in dockerfile.structure if i["instruction"] == "RUN")
    return re.findall(r'"([A-Za-z][^"]*[<>=][^"]*)"', runs)


@pytest.mark.parametrize("name", ["node.Dockerfile", "worker.Dockerfile"])
def test_dockerfiles(name: str) -> None:
    df = DockerfileParser(path=str(DOCKER / name))
    instructions = [i["instruction"] for i in df.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] == "FROM" and "HEALTHCHECK" in instructions
    users = [i["value"] for i in df.structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert '"cxr-triage"' in next(
        i["value"] for i in df.structure if i["instruction"] == "ENTRYPOINT"
    )
    for item in df.structure:
        if item["instruction"] == "COPY" and "--from" not in item["value"]:
            for source in item["value"].split()[:-1]:
                assert (ROOT / source).exists(), f"{name} copies missing {source}"
    # Every pinned requirement is the one pyproject.toml declares: no drift between them.
    declared = _pyproject_specs()
    for spec in _pip_specs(df):
        key = re.split(r"[<>=\[]", spec, maxsplit=1)[0].lower()
        assert declared.get(key) == spec, (
            f"{name}: {spec} differs from pyproject's {declared.get(key)}"
        )


def test_node_image_has_no_tensorflow() -> None:
    text = (DOCKER / "node.Dockerfile").read_text()
    runs = " ".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "tensorflow" not in runs.lower() and "--no-deps ." in runs


def test_compose_file() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "orthanc", "migrate", "node", "worker"}
    for name in ("redis", "postgres", "node", "worker"):
        assert "healthcheck" in services[name], name
    for name in ("node", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
        env = services[name]["environment"]
        assert env["CXR_DATABASE_URL"].startswith("postgresql://")
        assert env["CXR_BROKER_URL"].startswith("redis://redis:")
        assert "spool:/var/lib/cxr-triage" in services[name]["volumes"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for name in ("migrate", "worker"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).is_file()
    assert set(compose["volumes"]) >= {"spool", "postgres", "redis"}


def test_tensorflow_is_an_extra_the_images_choose() -> None:
    """The package's requirements name no TensorFlow: `cpu` or `gpu` picks the build, so the GPU
    image keeps its CUDA TensorFlow and no install ends with two builds of one package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any("tensorflow" in dep for dep in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(dep.startswith("tensorflow-cpu") for dep in extras["cpu"])
    assert any(dep.startswith("tensorflow[and-cuda]") for dep in extras["gpu"])
    assert "cxr-triage[cpu]" in extras["dev"]
    worker = (DOCKER / "worker.Dockerfile").read_text()
    assert "tensorflow-cpu" not in worker and "pip install --no-cache-dir . " in worker


def test_the_gpu_worker_image_serves_with_tensorflow() -> None:
    """LiteRT (the CPU install's runtime) would leave the GPU idle."""
    from models.compiled import RUNTIMES

    env = DockerfileParser(path=str(DOCKER / "worker.Dockerfile")).envs
    assert env.get("CXR_MODEL_RUNTIME") == "tensorflow" and "tensorflow" in RUNTIMES
