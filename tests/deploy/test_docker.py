"""Docker images and the compose stack, checked without a Docker engine: the compose file through the compose
CLI where one is installed (`docker compose` or Debian's `docker-compose`) and against what the stack must
contain; the Dockerfiles' instructions and build context; the GPU entrypoint's manifest handling."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPOSITORY_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    return [
        (text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined
    ]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(index for index, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def dockerignored(path: str) -> bool:
    """Whether `.dockerignore` keeps `path` (relative to the repository) out of the build context."""
    patterns = [
        line.strip()
        for line in (REPOSITORY_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for name, arguments in instructions(dockerfile):
        if name == "COPY" and "--from=" not in arguments:
            words = [word for word in shlex.split(arguments) if not word.startswith("--")]
            sources += words[:-1]
    return sources


# --- compose --------------------------------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_config_is_valid_for_the_compose_cli() -> None:
    command = compose_cli()
    if command is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed; the structure test still runs"
        )
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_stack_has_server_prometheus_and_grafana_wired_together() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert {"om2p", "prometheus", "grafana"} <= set(services)
    server = services["om2p"]
    assert (DOCKER_DIR / server["build"]["context"] / server["build"]["dockerfile"]).resolve() == (
        DOCKER_DIR / "Dockerfile"
    )
    assert "8000:8000" in server["ports"]
    # Prometheus scrapes the server by its service name and port, and only once it is healthy.
    scrape = yaml.safe_load((DOCKER_DIR / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == "om2p" and job["static_configs"][0]["targets"] == ["om2p:8000"]
    assert services["prometheus"]["depends_on"]["om2p"]["condition"] == "service_healthy"
    # Every bind mount exists in the repository; every named volume is declared.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DOCKER_DIR / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
            assert target.startswith("/")
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    prometheus_mounts = {volume.split(":")[1] for volume in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules.yml"} <= prometheus_mounts
    grafana_mounts = {volume.split(":")[1] for volume in services["grafana"]["volumes"]}
    assert "/etc/grafana/provisioning" in grafana_mounts


# --- images ---------------------------------------------------------------------------------------------


def test_cpu_image_is_slim_non_root_without_torch_and_checks_health() -> None:
    dockerfile = DOCKER_DIR / "Dockerfile"
    steps = final_stage(dockerfile)
    assert steps[0][0] == "FROM" and "-slim" in steps[0][1]
    users = [arguments for name, arguments in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    (healthcheck,) = [arguments for name, arguments in steps if name == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    runs = " ".join(arguments for name, arguments in instructions(dockerfile) if name == "RUN")
    assert 'pip install ".[serve]"' in runs and "pip show torch" in runs  # the guard that fails on torch
    assert "server/bundled" in runs  # the bundled policy goes in
    (command,) = [json.loads(arguments) for name, arguments in steps if name == "CMD"]
    assert command == ["om2p", "serve"]
    env = " ".join(arguments for name, arguments in steps if name == "ENV")
    assert "OM2P_HOST=0.0.0.0" in env and "OM2P_PORT=8000" in env  # matches EXPOSE and the k8s port
    # The same keep-alive as the Kubernetes Deployment: longer than a load balancer's 60 s idle timeout.
    assert "OM2P_KEEP_ALIVE_S=75" in env
    # 0.0.0.0 and no key: om2p serve would refuse an open /admin, so the image starts without it.
    assert "OM2P_ADMIN=false" in env
    assert ("EXPOSE", "8000") in steps


def test_serve_extra_never_pulls_torch() -> None:
    import tomllib

    extras = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not [requirement for requirement in extras["serve"] if requirement.lower().startswith("torch")]


def test_gpu_image_uses_tensorrt_and_the_engine_building_entrypoint() -> None:
    dockerfile = DOCKER_DIR / "Dockerfile.gpu"
    steps = instructions(dockerfile)
    args = " ".join(arguments for name, arguments in steps if name == "ARG")
    assert "nvcr.io/nvidia/tensorrt:" in args
    (entrypoint,) = [json.loads(arguments) for name, arguments in steps if name == "ENTRYPOINT"]
    copies = [shlex.split(arguments) for name, arguments in steps if name == "COPY"]
    assert ["docker/gpu_entrypoint.py", entrypoint[0]] in [words[-2:] for words in copies] or any(
        words[-2] == "docker/gpu_entrypoint.py" and words[-1].endswith(entrypoint[0]) for words in copies
    )
    users = [arguments for name, arguments in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(name == "HEALTHCHECK" and "/healthz" in arguments for name, arguments in steps)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_build_context_holds_what_the_image_copies(dockerfile: str) -> None:
    for source in copy_sources(DOCKER_DIR / dockerfile):
        if source.startswith("server/bundled"):
            continue  # checked by test_bundled_policy_is_a_valid_model_repository
        assert (REPOSITORY_ROOT / source).exists(), f"{dockerfile}: COPY {source}: not in the repository"
        assert not dockerignored(source), f"{dockerfile}: COPY {source}: excluded by .dockerignore"
    for needed in ("pyproject.toml", "om2p/cli.py", "export/manifest.py", "server/dashboard.py"):
        assert not dockerignored(needed), needed
    for kept_out in (".venv/bin/python", ".git/HEAD", "data/x.npz", "runs/a", "tests/deploy/conftest.py"):
        assert dockerignored(kept_out), kept_out


def test_dashboard_page_ships_as_package_data() -> None:
    """The image installs the package (not the source tree): the HTML must be package data."""
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_packages(str(REPOSITORY_ROOT), include=config["packages"]["find"]["include"])
    assert "server.static" in packages
    patterns = config["package-data"].get("server.static", []) + config["package-data"].get("*", [])
    assert any(fnmatch.fnmatch("dashboard.html", pattern) for pattern in patterns)


def test_bundled_policy_is_a_valid_model_repository() -> None:
    from export.manifest import load_manifest, resolve_version_dir

    bundled = REPOSITORY_ROOT / "server" / "bundled"
    if not bundled.is_dir():
        pytest.skip("server/bundled has not been exported yet (the images copy it)")
    manifest = load_manifest(resolve_version_dir(bundled))
    assert manifest.file("onnx", "fp32") is not None


# --- the GPU entrypoint's manifest handling (the engine build itself needs a GPU) ------------------------


@pytest.fixture(scope="module")
def entrypoint():
    spec = importlib.util.spec_from_file_location("om2p_gpu_entrypoint", DOCKER_DIR / "gpu_entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_registered_engine_is_verified_by_the_manifest_and_not_rebuilt(entrypoint, tmp_path: Path) -> None:
    from export.manifest import ManifestError, ParityRecord, TensorRTInfo, load_manifest
    from server.synthetic import write_synthetic_repository

    version_dir = write_synthetic_repository(tmp_path, hidden=(8,))
    engine = version_dir / entrypoint.ENGINE_FILENAMES["fp32"]
    engine.write_bytes(b"serialized engine bytes stand in here: the manifest only hashes them")
    info = TensorRTInfo(
        tensorrt_version="10.8.0", device="NVIDIA H100", profile={"min": 1, "opt": 64, "max": 4096}
    )
    parity = ParityRecord(
        file=engine.name,
        backend="tensorrt",
        precision="fp32",
        batch_sizes=[1, 7, 256],
        max_abs_error=2e-6,
        tolerance=1e-3,
        seed=0,
    )
    manifest = entrypoint.register_engine(version_dir, engine, "fp32", info, parity)
    artifact = manifest.file("tensorrt", "fp32")
    assert artifact is not None and artifact.path == "model.plan" and artifact.bytes == engine.stat().st_size
    assert manifest.file("onnx", "fp32") is not None  # the ONNX file stays listed
    assert manifest.tensorrt == info and manifest.parity == [parity]
    # A second start finds the engine and builds nothing (no TensorRT needed on this machine).
    assert entrypoint.ensure_engine(tmp_path, fp16=False) is None
    # The server's sha256 check covers the engine: a replaced file is refused.
    engine.write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(version_dir)


def test_engine_build_on_a_gpu(entrypoint, tmp_path: Path) -> None:
    from export.tensorrt_engine import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT engine build needs an NVIDIA GPU: {reason}")
    from export.manifest import load_manifest
    from server.synthetic import write_synthetic_repository

    write_synthetic_repository(tmp_path, hidden=(16,))
    engine = entrypoint.ensure_engine(tmp_path, fp16=False)
    assert engine is not None and engine.stat().st_size > 0
    manifest = load_manifest(engine.parent)
    assert manifest.file("tensorrt", "fp32") is not None and manifest.parity[-1].file == engine.name
