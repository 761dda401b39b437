"""The official OM2P code (JAX, github.com/lizr16/OM2P) as a peer of `benchmarks.train_step`.

Nothing of it enters the project: its source is exported from a git snapshot into a throwaway folder, and
it runs in its own throwaway venv (JAX CPU stack from PyPI), both under `~/.cache/om2p-peer`, in a child
process (`benchmarks/peer_om2p_child.py`) that builds its agents at their published defaults in their
finite-difference mode and times their jitted update when asked. Two optional dependencies that its training
path never calls are replaced by empty stand-ins: `distrax` (its Gaussian actor, which OM2P's mean-flow
agent does not build; one empty base class, because `utils/networks.py` subclasses it at import) and
`tensorflow_probability` (imported by `fql_meanfield.py` for the OMAR search, off by default).

    --peer-repo PATH / $OM2P_PEER_REPO: a git directory or work tree of lizr16/OM2P (default: the mirror
    at /work/.mirror/lizr16+OM2P/repo when it exists).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_REPO = Path("/work/.mirror/lizr16+OM2P/repo")
CACHE = Path(os.environ.get("OM2P_PEER_CACHE", Path.home() / ".cache" / "om2p-peer"))
CHILD = Path(__file__).resolve().parent / "peer_om2p_child.py"
REQUIREMENTS = ("jax[cpu]", "flax", "optax", "ml_collections")
"""The peer's training path: its requirements.txt less what that path never imports (d4rl, gym, ogbench,
wandb, moviepy, ...)."""
STAND_INS = {
    "distrax/__init__.py": "class Transformed:  # stand-in: subclassed at import, never used by OM2P\n    pass\n",
    "tensorflow_probability/__init__.py": "",
    "tensorflow_probability/substrates/__init__.py": "",
    "tensorflow_probability/substrates/jax/__init__.py": "",
    "tensorflow_probability/substrates/jax/distributions.py": "",
}


class PeerUnavailable(RuntimeError):
    """The peer cannot run on this machine (no snapshot, no PyPI); the message says why."""


def find_repo(path: str | None = None) -> Path:
    candidate = (
        path or os.environ.get("OM2P_PEER_REPO") or (str(DEFAULT_REPO) if DEFAULT_REPO.exists() else None)
    )
    if candidate is None:
        raise PeerUnavailable("no lizr16/OM2P snapshot: pass --peer-repo PATH or set OM2P_PEER_REPO")
    repo = Path(candidate)
    if not repo.exists():
        raise PeerUnavailable(f"{repo}: no such peer repository")
    return repo


def _git(repo: Path, *args: str) -> str:
    git_dir = ["--git-dir", str(repo)] if (repo / "HEAD").is_file() else ["-C", str(repo)]
    out = subprocess.run(["git", *git_dir, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise PeerUnavailable(f"git {' '.join(args)} in {repo}: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


def prepare(repo_path: str | None = None, log=print) -> dict:
    """Source folder, venv python and stand-ins of the peer, made once and reused; raises `PeerUnavailable`."""
    repo = find_repo(repo_path)
    commit = _git(repo, "rev-parse", "HEAD")
    source = CACHE / f"src-{commit[:12]}"
    if not (source / "agents" / "fql_meanfield.py").is_file():
        source.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            [
                "git",
                *(["--git-dir", str(repo)] if (repo / "HEAD").is_file() else ["-C", str(repo)]),
                "archive",
                "HEAD",
            ],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise PeerUnavailable(f"git archive of {repo} failed: {archive.stderr.decode()[-300:]}")
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    stand_ins = CACHE / "stand-ins"
    for name, text in STAND_INS.items():
        (stand_ins / name).parent.mkdir(parents=True, exist_ok=True)
        (stand_ins / name).write_text(text)
    python = CACHE / "venv" / "bin" / "python"
    if not python.exists() or _run_python(python, "import jax, flax, optax, ml_collections").returncode != 0:
        log(f"peer: building a throwaway venv under {CACHE / 'venv'} ({', '.join(REQUIREMENTS)} from PyPI)")
        subprocess.run([sys.executable, "-m", "venv", str(CACHE / "venv")], check=True)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
            capture_output=True,
            text=True,
            check=False,
        )
        if pip.returncode != 0:
            raise PeerUnavailable(f"pip install of the peer's JAX stack failed: {pip.stderr.strip()[-300:]}")
    versions = _run_python(
        python, "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__)"
    )
    jax_version, flax_version, optax_version = versions.stdout.split()
    return {
        "repo": str(repo),
        "commit": commit,
        "source": str(source),
        "python": str(python),
        "stand_ins": str(stand_ins),
        "versions": {"jax": jax_version, "flax": flax_version, "optax": optax_version},
    }


def _run_python(python: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)


class PeerStep:
    """The peer's joint update (every agent object updated in turn) in a child process, timed on request.
    `cores`: the CPUs it may run on; with one core XLA's intra-op threading is off as well."""

    def __init__(
        self,
        peer: dict,
        hidden: list[int],
        batch: int,
        agents: int,
        obs_dim: int,
        act_dim: int,
        cores: set[int],
    ):
        env = dict(os.environ, PYTHONPATH=peer["stand_ins"], JAX_PLATFORMS="cpu")
        if len(cores) == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        self.process = subprocess.Popen(
            ["taskset", "-c", ",".join(map(str, sorted(cores))), peer["python"], str(CHILD), peer["source"]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        spec = {"hidden": hidden, "batch": batch, "agents": agents, "obs_dim": obs_dim, "act_dim": act_dim}
        self.setup = self._ask(spec)

    def _ask(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise PeerUnavailable(f"the peer's child process died: {self.process.stderr.read()[-1500:]}")
        return json.loads(line)

    def time(self, steps: int) -> float:
        """Seconds per joint update over `steps` updates."""
        return self._ask({"steps": steps})["ms_per_step"] / 1e3

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
