"""The image's scripts, run without building: what build.sh puts in the build context and
passes to the engine, what run.sh publishes, how the entrypoint starts either runtime; and
the rules its files keep (one torch pin, every requirement pinned, ports agree)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"


def pinned_torch_version() -> str:
    """The version in docker/torch.txt, the project's one torch pin."""
    lines = (DOCKER_DIR / "torch.txt").read_text().splitlines()
    (pin,) = [line for line in lines if line.startswith("torch==")]
    return pin.removeprefix("torch==")


def pinned_cpu_index() -> str:
    """PyTorch's CPU index, named beside the pin in docker/torch.txt."""
    lines = (DOCKER_DIR / "torch.txt").read_text().splitlines()
    (line,) = [line for line in lines if line.startswith("--extra-index-url")]
    return line.split(maxsplit=1)[1]


def test_the_torch_pin_is_typed_only_in_docker_torch_txt():
    # Whatever installs or builds torch must read docker/torch.txt, not carry its own copy.
    candidates = [
        *REPO_ROOT.glob("scripts/*"),
        *DOCKER_DIR.rglob("*"),
        *REPO_ROOT.glob("tests/**/*.py"),
    ]
    readers = [path for path in candidates if path.is_file() and path.name != "torch.txt"]
    version = re.escape(pinned_torch_version())
    typed = re.compile(rf"torch==\s*{version}|TORCH_VERSION\s*[=:-]+\s*{version}")
    copies = [str(path) for path in readers if typed.search(path.read_text())]
    assert copies == []


def test_the_cpu_index_is_typed_only_in_docker_torch_txt():
    # setup.sh and build.sh take PyTorch's CPU index from beside the pin, as pip does with -r.
    assert re.fullmatch(r"https://\S+/whl/cpu/?", pinned_cpu_index())
    readers = [
        path
        for path in [*REPO_ROOT.glob("scripts/*"), *DOCKER_DIR.rglob("*"),
                     *REPO_ROOT.glob("tests/**/*.py")]
        if path.is_file() and path.name != "torch.txt"
    ]  # fmt: skip
    copies = [str(path) for path in readers if pinned_cpu_index() in path.read_text()]
    assert copies == []


def test_requirements_are_all_pinned():
    for line in (DOCKER_DIR / "requirements.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.+]*", requirement), line


@pytest.fixture
def fake_engine(tmp_path):
    """A stand-in `docker` that records its arguments and the build context's files."""
    engine = tmp_path / "bin" / "docker"
    engine.parent.mkdir()
    log = tmp_path / "engine.log"
    engine.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > {shlex.quote(str(log))}\n'
        'if [[ "$1" == build ]]; then\n'
        f'    (cd "${{@: -1}}" && find . -type f | sort) > {shlex.quote(str(log))}.context\n'
        "fi\n"
    )
    engine.chmod(0o755)
    return engine, log


def run_script(
    script: str, *args: str, engine: Path, **settings: str
) -> subprocess.CompletedProcess:
    """docker/<script> with `engine` as CONTAINER_ENGINE and no torch settings but `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_VERSION", "TORCH_INDEX_URL")}
    env.update(settings, CONTAINER_ENGINE=str(engine))
    return subprocess.run(
        [str(DOCKER_DIR / script), *args], env=env, capture_output=True, text=True
    )


def test_build_stages_a_small_context_and_passes_build_args(fake_engine, tiny_export_dir, tmp_path):
    engine, log = fake_engine
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "example-1.0-py3-none-any.whl").write_bytes(b"")
    result = run_script(
        "build.sh", "cpu", "--export-dir", str(tiny_export_dir), "--wheelhouse", str(wheelhouse),
        engine=engine,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    args = log.read_text().splitlines()
    assert args[0] == "build"
    assert args[args.index("--tag") + 1] == "fashion-serve:cpu"
    assert "BASE_IMAGE=debian:bookworm-slim" in args
    assert f"TORCH_INDEX_URL={pinned_cpu_index()}" in args
    assert f"TORCH_VERSION={pinned_torch_version()}" in args
    context = set(Path(f"{log}.context").read_text().split())
    assert {
        "./docker/Dockerfile", "./docker/entrypoint.sh", "./docker/requirements.txt",
        "./scripts/archive.sh", "./scripts/rollout.py", "./scripts/management_api.py",
        "./handler/fashion_handler.py", "./handler/model-config.yaml",
        # the serving package: packed into the archive and installed for the KServe runtime
        "./handler/fashion_serve/__init__.py", "./handler/fashion_serve/kserve_server.py",
        "./handler/fashion_serve/torchserve_runtime.py",
        "./export/model.pt",
        "./wheelhouse/example-1.0-py3-none-any.whl",
    } <= context  # fmt: skip
    assert not any(
        ".venv" in path or "egg-info" in path or "__pycache__" in path for path in context
    )


def test_build_gpu_uses_cuda_base_and_torch(fake_engine, tiny_export_dir):
    engine, log = fake_engine
    result = run_script("build.sh", "gpu", "--export-dir", str(tiny_export_dir), engine=engine)
    assert result.returncode == 0, result.stderr
    args = log.read_text().splitlines()
    assert args[args.index("--tag") + 1] == "fashion-serve:gpu"
    assert any(arg.startswith("BASE_IMAGE=nvidia/cuda:") for arg in args)
    assert any(re.fullmatch(r"TORCH_INDEX_URL=.*/whl/cu\d+", arg) for arg in args)


def test_build_passes_a_torch_version_from_the_environment_over_the_pin(
    fake_engine, tiny_export_dir
):
    engine, log = fake_engine
    result = run_script(
        "build.sh", "--export-dir", str(tiny_export_dir), engine=engine, TORCH_VERSION="9.8.7"
    )
    assert result.returncode == 0, result.stderr
    assert "TORCH_VERSION=9.8.7" in log.read_text().splitlines()


def test_build_without_an_export_says_what_to_do(fake_engine, tmp_path):
    engine, log = fake_engine
    result = run_script("build.sh", "cpu", "--export-dir", str(tmp_path / "none"), engine=engine)
    assert result.returncode != 0
    assert "python -m training export" in result.stderr and "--no-model" in result.stderr
    assert not log.exists()


def test_run_publishes_on_loopback_without_the_management_port(fake_engine):
    engine, log = fake_engine
    result = run_script("run.sh", engine=engine)
    assert result.returncode == 0, result.stderr
    args = log.read_text().splitlines()
    published = [args[i + 1] for i, arg in enumerate(args) if arg == "--publish"]
    assert published == ["127.0.0.1:8080:8080", "127.0.0.1:8082:8082"]
    assert "fashion-serve-run:/home/model-server/run" in args
    assert args[-1] == "fashion-serve:cpu"
    assert "--gpus" not in args


def test_run_gpu_adds_gpus_and_optional_management_port(fake_engine):
    engine, log = fake_engine
    result = run_script("run.sh", "gpu", "--management-port", "9081", engine=engine)
    assert result.returncode == 0, result.stderr
    args = log.read_text().splitlines()
    assert args[args.index("--gpus") + 1] == "all"
    assert "127.0.0.1:9081:8081" in args
    assert args[-1] == "fashion-serve:gpu"


def fake_tools(tmp_path: Path, *engines: str) -> Path:
    """A PATH folder with what run.sh needs, a `docker` whose daemon does not answer, and
    stand-ins for `engines` that print the arguments they get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "basename"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    stand_ins = {"docker": "exit 1\n"} | {name: 'printf "%s\\n" "$@"\n' for name in engines}
    for name, body in stand_ins.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_without_engine_setting(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CONTAINER_ENGINE"}
    env["PATH"] = str(path)
    return subprocess.run(
        [str(DOCKER_DIR / "run.sh"), *args], env=env, capture_output=True, text=True
    )


def test_run_falls_back_to_podman_when_no_docker_daemon_answers(tmp_path):
    result = run_without_engine_setting(fake_tools(tmp_path, "podman"), "gpu")
    assert result.returncode == 0, result.stderr
    assert "tokens: podman exec" in result.stdout
    args = result.stdout.splitlines()
    assert args[args.index("--device") + 1] == "nvidia.com/gpu=all"  # podman's CDI spelling


def test_run_without_any_engine_says_what_to_do(tmp_path):
    result = run_without_engine_setting(fake_tools(tmp_path))
    assert result.returncode == 1
    assert "run: no docker daemon" in result.stderr and "CONTAINER_ENGINE" in result.stderr


def run_entrypoint(
    tmp_path: Path,
    model_store: Path,
    rollout: str = "no-such-rollout",
    args: tuple[str, ...] = (),
    **settings: str,
) -> subprocess.CompletedProcess:
    """docker/entrypoint.sh with stand-ins for `torchserve` and `python` (the KServe runtime)
    that print their name, cwd and arguments; `settings` are environment variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("torchserve", "python"):
        fake = bin_dir / name
        fake.write_text(
            f'#!/usr/bin/env bash\necho "ran={name}"\necho "cwd=$PWD"\nprintf "%s\\n" "$@"\n'
        )
        fake.chmod(0o755)
    unset = ("RUNTIME", "MODEL_NAME", "DISABLE_TOKEN_AUTHORIZATION")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        MODEL_STORE=str(model_store),
        TS_RUN_DIR=str(tmp_path / "run"),
        TMPDIR=str(tmp_path / "tmp"),
        LOG_LOCATION=str(tmp_path / "logs"),
        ROLLOUT=rollout,
    )
    env.update(settings)
    return subprocess.run(
        [str(DOCKER_DIR / "entrypoint.sh"), *args], env=env, capture_output=True, text=True
    )


def model_store_with(tmp_path: Path, *archives: str) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for name in archives:
        (store / name).write_bytes(b"")
    return store


def test_entrypoint_refuses_an_empty_model_store(tmp_path):
    result = run_entrypoint(tmp_path, tmp_path / "empty")
    assert result.returncode == 1
    assert "no .mar in" in result.stderr and "mount a model store" in result.stderr


def test_entrypoint_serves_the_store_from_the_run_dir(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "fashion-cnn.mar").write_bytes(b"")
    result = run_entrypoint(tmp_path, store)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "ran=torchserve" in lines  # RUNTIME unset: TorchServe, the image's default
    # key_file.json is written to TorchServe's working directory: the run dir.
    assert f"cwd={tmp_path / 'run'}" in lines
    args = lines[lines.index(f"cwd={tmp_path / 'run'}") + 1 :]
    assert args[0] == "--foreground"
    assert args[args.index("--model-store") + 1] == str(store)
    assert args[args.index("--models") + 1] == "all"


def test_entrypoint_serves_the_version_an_update_left_serving(tmp_path):
    """After fashion-serve-rollout update, a restarted container loads that version only."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "fashion-cnn.mar").write_bytes(b"")
    (store / "fashion-cnn-2.0.mar").write_bytes(b"")
    (tmp_path / "run").mkdir()
    history = [
        {"version": "1.0", "mar": "fashion-cnn.mar"},
        {"version": "2.0", "mar": "fashion-cnn-2.0.mar"},
    ]
    (tmp_path / "run" / "versions.json").write_text(json.dumps(history))
    rollout = str(REPO_ROOT / "scripts" / "rollout.py")
    result = run_entrypoint(tmp_path, store, rollout)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert args[args.index("--models") + 1] == "fashion-cnn=fashion-cnn-2.0.mar"


def dockerfile_text() -> str:
    return re.sub(r"\\\n", " ", (DOCKER_DIR / "Dockerfile").read_text())


def exposed_ports() -> set[int]:
    (line,) = re.findall(r"^EXPOSE (.+)$", dockerfile_text(), re.MULTILINE)
    return {int(port) for port in line.split()}


def kserve_arguments(result: subprocess.CompletedProcess) -> list[str]:
    """What the entrypoint passed to `python` (the KServe runtime)."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "ran=python" in lines, result.stdout
    return lines[lines.index("ran=python") + 2 :]  # after its name and cwd


def test_entrypoint_runtime_kserve_execs_the_kserve_server_on_the_exposed_ports(tmp_path):
    store = model_store_with(tmp_path, "fashion-cnn.mar")
    result = run_entrypoint(tmp_path, store, RUNTIME="kserve")
    args = kserve_arguments(result)
    assert args[:2] == ["-m", "fashion_serve.kserve_server"]
    assert args[args.index("--archive") + 1] == str(store / "fashion-cnn.mar")
    # The run dir the healthcheck reads the key file from (TS_RUN_DIR, as TorchServe's).
    assert args[args.index("--run-dir") + 1] == str(tmp_path / "run")
    # All interfaces inside the container; publishing or a Service decides who reaches it.
    assert args[args.index("--host") + 1] == "0.0.0.0"
    http_port, grpc_port = (
        int(args[args.index("--http-port") + 1]),
        int(args[args.index("--grpc-port") + 1]),
    )
    assert (http_port, grpc_port) == (8080, 7070)
    assert {http_port, grpc_port} <= exposed_ports()
    assert "--disable-token-authorization" not in args  # tokens on unless asked
    assert "HTTP :8080, gRPC :7070" in result.stdout


def test_entrypoint_kserve_passes_the_token_opt_out_and_extra_arguments(tmp_path):
    store = model_store_with(tmp_path, "fashion-cnn.mar")
    result = run_entrypoint(
        tmp_path,
        store,
        args=("--workers", "1"),
        RUNTIME="kserve",
        DISABLE_TOKEN_AUTHORIZATION="true",
    )
    args = kserve_arguments(result)
    assert "--disable-token-authorization" in args
    assert args[-2:] == ["--workers", "1"]  # the container's arguments go to the server
    assert "token authorization OFF" in result.stdout


def test_entrypoint_kserve_serves_the_only_archive_whatever_its_name(tmp_path):
    """A store mounted from KServe's storage (MODEL_STORE=/mnt/models) holding one .mar."""
    store = model_store_with(tmp_path, "fashion-cnn-2.0.mar")
    args = kserve_arguments(run_entrypoint(tmp_path, store, RUNTIME="kserve"))
    assert args[args.index("--archive") + 1] == str(store / "fashion-cnn-2.0.mar")


def test_entrypoint_kserve_prefers_model_name_mar_among_several(tmp_path):
    store = model_store_with(tmp_path, "fashion-cnn.mar", "fashion-cnn-2.0.mar")
    args = kserve_arguments(run_entrypoint(tmp_path, store, RUNTIME="kserve"))
    assert args[args.index("--archive") + 1] == str(store / "fashion-cnn.mar")


def test_entrypoint_kserve_refuses_to_guess_among_several_archives(tmp_path):
    store = model_store_with(tmp_path, "a.mar", "b.mar")
    result = run_entrypoint(tmp_path, store, RUNTIME="kserve")
    assert result.returncode == 1
    assert "none is fashion-cnn.mar" in result.stderr and "MODEL_NAME" in result.stderr


def test_entrypoint_kserve_serves_the_version_an_update_left_serving(tmp_path):
    store = model_store_with(tmp_path, "fashion-cnn.mar", "fashion-cnn-2.0.mar")
    (tmp_path / "run").mkdir()
    history = [
        {"version": "1.0", "mar": "fashion-cnn.mar"},
        {"version": "2.0", "mar": "fashion-cnn-2.0.mar"},
    ]
    (tmp_path / "run" / "versions.json").write_text(json.dumps(history))
    rollout = str(REPO_ROOT / "scripts" / "rollout.py")
    args = kserve_arguments(run_entrypoint(tmp_path, store, rollout, RUNTIME="kserve"))
    assert args[args.index("--archive") + 1] == str(store / "fashion-cnn-2.0.mar")


def test_entrypoint_refuses_an_unknown_runtime(tmp_path):
    store = model_store_with(tmp_path, "fashion-cnn.mar")
    result = run_entrypoint(tmp_path, store, RUNTIME="triton")
    assert result.returncode == 1
    assert "RUNTIME=triton" in result.stderr and "kserve" in result.stderr
    assert "ran=" not in result.stdout


def test_dockerfile_defaults_to_torchserve_and_makes_fashion_serve_importable():
    dockerfile = dockerfile_text()
    assert re.search(r"^ENV .*\bRUNTIME=torchserve\b", dockerfile, re.MULTILINE)
    # Installed into the venv, not put on PYTHONPATH: TorchServe puts PYTHONPATH ahead of
    # each unpacked archive, so a PYTHONPATH copy would shadow the code a .mar carries.
    instructions = [line for line in dockerfile.splitlines() if not line.startswith("#")]
    assert not [line for line in instructions if "PYTHONPATH" in line]
    assert re.search(r'cp -r /tmp/build/handler/fashion_serve "\$\{site_packages\}', dockerfile)
    assert "import fashion_serve.kserve_runtime" in dockerfile  # fails the build, not the pod


def test_the_image_puts_management_api_beside_the_scripts_that_import_it(tmp_path):
    """fashion-serve-rollout and fashion-serve-healthcheck import management_api from their
    own folder: laid out as the Dockerfile copies them, both start (without PYTHONPATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for source, name in re.findall(r"^COPY (\S+) /usr/local/bin/(\S+)$", dockerfile_text(), re.M):
        shutil.copy(REPO_ROOT / source, bin_dir / name)
    python = [sys.executable, "-E", "-s"]
    rollout = [*python, str(bin_dir / "fashion-serve-rollout"), "serving-mar", "--run-dir"]
    done = subprocess.run([*rollout, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    healthcheck = [*python, str(bin_dir / "fashion-serve-healthcheck"), "--key-file"]
    done = subprocess.run([*healthcheck, str(tmp_path / "none")], capture_output=True, text=True)
    assert "no readable key file" in done.stdout, done.stderr


def test_requirements_pin_the_kserve_runtime():
    pins = dict(
        line.split("#", 1)[0].strip().split("==")
        for line in (DOCKER_DIR / "requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    )
    assert pins["kserve"] == "0.21.0"
    # What kserve 0.21.0 asks for, which the TorchServe stack alone had pinned higher.
    assert int(pins["psutil"].split(".")[0]) < 6
    assert int(pins["python-dateutil"].split(".")[0]) < 3


def test_run_kserve_publishes_rest_and_grpc_on_loopback(fake_engine):
    engine, log = fake_engine
    result = run_script("run.sh", "--runtime", "kserve", engine=engine)
    assert result.returncode == 0, result.stderr
    args = log.read_text().splitlines()
    assert args[args.index("--env") + 1] == "RUNTIME=kserve"
    published = [args[i + 1] for i, arg in enumerate(args) if arg == "--publish"]
    assert published == ["127.0.0.1:8080:8080", "127.0.0.1:7070:7070"]
    if Path("/proc/sys/net/ipv4/tcp_migrate_req").exists():  # the kernel has it: asked for
        assert args[args.index("--sysctl") + 1] == "net.ipv4.tcp_migrate_req=1"


def test_run_kserve_has_no_management_port_to_publish(fake_engine):
    engine, log = fake_engine
    result = run_script("run.sh", "--runtime", "kserve", "--management-port", "9081", engine=engine)
    assert result.returncode == 1
    assert "no management API" in result.stderr
    assert not log.exists()


def pypi_answers() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/kserve/", timeout=10):
            return True
    except OSError:
        return False


@pytest.mark.network
@pytest.mark.slow
def test_the_image_requirements_resolve_to_themselves_and_one_torch(tmp_path):
    """pip's resolver, as the image build runs it (docker/torch.txt, then requirements.txt),
    installs exactly the pinned packages and the pinned torch: nothing unpinned, no other torch."""
    if not pypi_answers():
        pytest.skip("PyPI cannot be reached from here")
    report = tmp_path / "report.json"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--quiet", "--retries", "0", "--report", str(report),
            "-r", str(DOCKER_DIR / "torch.txt"), "-r", str(DOCKER_DIR / "requirements.txt"),
        ],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    installed = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    pins = dict(
        line.split("#", 1)[0].strip().lower().split("==")
        for line in (DOCKER_DIR / "requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    )
    assert installed.pop("torch").split("+")[0] == pinned_torch_version()
    assert not [name for name in installed if name.startswith("nvidia-")]  # a CUDA torch's
    assert installed == pins
