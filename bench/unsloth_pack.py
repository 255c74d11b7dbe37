"""Unsloth for the GPU machine, which reaches no package registry: fetch, prune, check, pack.

Fetches the wheels Unsloth's training path needs for Python 3.12 on Linux (Unsloth and unsloth_zoo at one
pinned version, the trl it accepts, and the small packages the GPU image lacks), unpacks only the importable
packages into one folder (leaving out Unsloth's web front end `studio/`, its CLI and unsloth_zoo's Apple-only
`mlx/`), checks statically that every module-level import of Unsloth resolves — to that folder, to the
standard library, to the GPU image's packages or to the wheels bench/gpu_check.sh carries anyway — and zips
the folder to `.whl/unsloth-site.zip` (bench/gpu_check.sh unpacks it and gives only Unsloth's worker process
that path, so every other configuration keeps the image's trl).

    python bench/unsloth_pack.py                 # writes .whl/unsloth-site.zip and prints the check
    python bench/unsloth_pack.py --check-only    # the import check of an existing .whl/unsloth-site

Exits 1 when an import does not resolve: the GPU run would fail on it.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNSLOTH = "2026.10.9"
WHEELS = [f"unsloth=={UNSLOTH}", f"unsloth_zoo=={UNSLOTH}", "trl==1.15.0", "cut_cross_entropy", "tyro",
          "docstring_parser", "typeguard", "shtab", "torchao", "hf_transfer", "msgspec"]  # fmt: skip
LEFT_OUT = ("studio", "unsloth_cli", "unsloth_zoo/mlx")  # the web front end, the CLI, Apple-only code
# The GPU image's packages by import name (the device library's KINDS.md, "Python packages already there",
# read 2026-11-17), and what bench/gpu_check.sh carries as wheels from ../shared/gpu/fetch-wheels.sh.
GPU_IMAGE = """absl accelerate aiofiles aiohttp aiosignal anyio attr attrs certifi charset_normalizer click cloudpickle
colorama contourpy cupy cycler cython einops filelock flatbuffers fsspec google grpc h11 h5py hf_xet httpcore
httpx huggingface_hub humanize hypothesis idna imageio jax jaxlib jinja2 joblib kiwisolver lazy_loader lightning
llvmlite lxml markdown markdown_it markupsafe matplotlib mdurl ml_dtypes mpmath msgpack multidict networkx
numba numpy onnx onnxruntime optax packaging pandas pathspec patsy peft PIL pip pluggy portalocker
prometheus_client propcache psutil pyarrow pybind11 cpuinfo pygments pyparsing dateutil pytorch_lightning yaml
regex requests rich safetensors sentencepiece sentence_transformers setuptools shellingham simplejson six
sortedcontainers scipy sklearn statsmodels sympy tabulate tensorboard tiktoken timm tokenizers toolz torch
torchaudio torchvision torchmetrics tqdm transformers triton typer typing_extensions typing_inspect urllib3
werkzeug wheel wrapt xxhash yarl zipp""".split()
CARRIED = "bitsandbytes trl datasets dill multiprocess pydantic pydantic_core annotated_types typing_inspection " \
          "liger_kernel".split()  # fmt: skip


def fetch(cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    plat = [a for n in (17, 24, 27, 28, 31, 34) for a in ("--platform", f"manylinux_2_{n}_x86_64")]
    for spec in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *plat, "--platform",
                        "manylinux2014_x86_64", "-d", str(cache), spec], check=True)  # fmt: skip
    return sorted(cache.glob("*.whl"))


def unpack(wheels: list[Path], site: Path) -> None:
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if any(name == p or name.startswith(p + "/") for p in LEFT_OUT) or "__pycache__" in name:
                    continue
                z.extract(name, site)


GUARD = re.compile(r"avail|HAS_|has_|is_[a-z_]+\(|version|TYPE_CHECKING|platform|torch\.cuda|__name__")


def module_file(site: Path, name: str) -> Path | None:
    base = site.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(site: Path, name: str, path: Path) -> list[tuple[str, bool]]:
    """(dotted name, optional) of what a module imports when it is loaded: module-level imports, those in if
    branches (both sides; optional when the test asks whether something is available, a version or the
    platform) and in try blocks (optional). Imports inside functions are lazy: left out."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(body, optional: bool):
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((a.name, optional) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    anchor = ".".join(parts[: len(parts) - node.level + 1])
                    module = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    module = node.module or ""
                found.append((module, optional))
                found.extend((f"{module}.{a.name}", optional) for a in node.names  # a submodule imported by name
                             if module_file(site, f"{module}.{a.name}"))  # fmt: skip
            elif isinstance(node, ast.If):  # `if is_wandb_available():`, `if HAS_FLASH:`: a guarded import
                guarded = optional or bool(GUARD.search(ast.unparse(node.test)))
                visit(node.body, guarded)
                visit(node.orelse, guarded)
            elif isinstance(node, ast.Try):
                visit(node.body, True)

    visit(tree.body, False)
    return found


def unresolved(site: Path, roots=("unsloth", "trl")) -> dict[str, list[str]]:
    """{top-level import name: [modules importing it]}: what `import unsloth` (and trl) load, followed module by
    module through the unpacked folder, that neither the folder, the standard library, the GPU image nor the
    carried wheels provide. Guarded imports (in a try block) may be missing."""
    known = set(sys.stdlib_module_names) | set(GPU_IMAGE) | set(CARRIED) | {"__future__"}
    missing: dict[str, list[str]] = {}
    seen, queue = set(), list(roots)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(site, name)
        if path is None:
            continue
        for imported, optional in imports_of(site, name, path):
            top = imported.split(".")[0]
            parts = imported.split(".")
            for k in range(1, len(parts) + 1):  # a package's __init__ runs before its submodule
                if module_file(site, ".".join(parts[:k])):
                    queue.append(".".join(parts[:k]))
            if not (site / top).exists() and not (site / f"{top}.py").exists() and top not in known and not optional:
                missing.setdefault(top, []).append(name)
    return missing


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".whl")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "llmops-studio" / "unsloth-wheels")
    p.add_argument("--check-only", action="store_true")
    args = p.parse_args(argv)
    site = args.out / "unsloth-site"
    if not args.check_only:
        unpack(fetch(args.cache), site)
    for package in ("unsloth", "unsloth_zoo", "trl"):
        if not (site / package / "__init__.py").exists():
            print(f"incomplete: {package}/__init__.py is missing from {site}")
            return 1
    missing = unresolved(site)
    print(f"{site}: {size_mb(site):.1f} MB unpacked")
    for name, files in sorted(missing.items()):
        print(f"unresolved import {name!r} in {len(files)} file(s), e.g. {files[0]}")
    if not args.check_only:
        archive = args.out / "unsloth-site.zip"
        archive.unlink(missing_ok=True)
        shutil.make_archive(str(archive.with_suffix("")), "zip", site)
        print(f"{archive}: {size_mb(archive):.1f} MB; all of {args.out}: "
              f"{sum(size_mb(f) for f in args.out.glob('*') if f.is_file()):.1f} MB in files beside it")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
