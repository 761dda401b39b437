"""`make demo`: serve the bundled policy, drive the real environment through the server, load it briefly,
print returns and latency, and stop the server cleanly (SIGTERM: not-ready, drain, exit)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "server" / "bundled" / "cooperative_navigation"
ENV = "cooperative_navigation"
EPISODES = 3
LOAD_SECONDS = 3.0
LOAD_CLIENTS = 16


def _random_rollouts() -> None:
    """The fallback when no policy is bundled: a seeded random-action episode of each environment."""
    from training.envs import ENV_NAMES, env_spec, evaluate_policy, random_policy

    for name in ENV_NAMES:
        result = evaluate_policy(name, random_policy(env_spec(name), seed=0), seeds=[0])
        print(f"  {name:<28} random-action return {float(result.returns[0]):.3f}")


def main() -> int:
    from export.manifest import resolve_version_dir

    try:
        version_dir = resolve_version_dir(BUNDLED)
    except (FileNotFoundError, ValueError) as error:
        print(
            f"om2p demo: no bundled policy under {BUNDLED} ({error}); showing random-action rollouts instead."
        )
        _random_rollouts()
        return 0

    from clients.control import format_report, run_control
    from clients.loadgen import format_summary, model_observations, run_load
    from server.process import ServerProcess

    print(f"om2p demo: serving {version_dir} on loopback ...")
    server = ServerProcess(version_dir).start()
    try:
        print(f"server ready at {server.url}\n")
        print(f"om2p control --env {ENV} --episodes {EPISODES}  (served vs in-process, same seeds)")
        report = run_control(server.url, ENV, EPISODES, model=version_dir)
        print(format_report(report))
        print(f"\nom2p loadgen --concurrency {LOAD_CLIENTS} --duration {LOAD_SECONDS:g} --binary")
        observations = model_observations(server.url)
        load = asyncio.run(
            run_load(server.url, observations, LOAD_SECONDS, concurrency=LOAD_CLIENTS, binary=True)
        )
        print("  " + format_summary(load.summary()))
    finally:
        server.terminate()
        code = server.wait()
        server.stop()
    print(f"\nserver stopped cleanly (exit code {code}).")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
