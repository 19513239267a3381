"""How to build and run a program in each supported language inside a sandbox box."""

from __future__ import annotations

from dataclasses import dataclass

from flopnet.protocol.errors import VerifierError
from flopnet.verifiers.sandbox import BOX, Box, Limits, RunResult, Sandbox
from flopnet.verifiers.sandbox.base import MiB


@dataclass(frozen=True)
class Language:
    """A language: its source file, an optional build step, the run command, the tool needed."""

    name: str
    source: str
    run: tuple[str, ...]
    tool: str
    build: tuple[str, ...] = ()
    install_hint: str = ""


LANGUAGES: dict[str, Language] = {
    "python": Language(
        "python",
        "main.py",
        # -I: ignore PYTHON* variables and the user's site dir (the system's read-only
        # dist-packages stay importable: numpy, sortedcontainers where installed); -B: no .pyc
        # writes into the read-only box.
        ("python3", "-I", "-B", f"{BOX}/main.py"),
        "python3",
        install_hint="apt-get install python3",
    ),
    "javascript": Language(
        "javascript",
        "main.js",
        ("node", f"{BOX}/main.js"),
        "node",
        install_hint="apt-get install nodejs",
    ),
    "cpp": Language(
        "cpp",
        "main.cpp",
        (f"{BOX}/main",),
        "g++",
        build=("g++", "-O2", "-std=gnu++17", "-pipe", "-o", f"{BOX}/main", f"{BOX}/main.cpp"),
        install_hint="apt-get install g++",
    ),
    "rust": Language(
        "rust",
        "main.rs",
        (f"{BOX}/main",),
        "rustc",
        build=("rustc", "-O", "--edition", "2021", "-o", f"{BOX}/main", f"{BOX}/main.rs"),
        install_hint="apt-get install rustc (or rustup)",
    ),
}

#: Limits of a build step: compilers need more memory and time than the programs they build.
BUILD_LIMITS = Limits(
    wall_s=60.0, cpu_s=60, memory_mb=4096, processes=64, file_bytes=256 * MiB, tmpfs_mb=256
)


def language(name: str) -> Language:
    """The language called ``name``; VerifierError when unsupported."""
    try:
        return LANGUAGES[name]
    except KeyError:
        supported = ", ".join(sorted(LANGUAGES))
        raise VerifierError(f"unsupported language {name!r} (supported: {supported})") from None


def require_tool(sandbox: Sandbox, lang: Language) -> None:
    """VerifierError naming what to install when ``lang``'s toolchain is missing."""
    if not sandbox.has_tool(lang.tool):
        raise VerifierError(
            f"no {lang.name} toolchain in the {sandbox.name} sandbox ({lang.tool} not found): "
            f"{lang.install_hint}"
        )


def prepare(box: Box, lang: Language, code: str) -> RunResult | None:
    """Write the source into the box and build it; the failed build's result, or None."""
    box.write(lang.source, code.encode("utf-8", "replace"))
    if not lang.build:
        return None
    result = box.run(list(lang.build), limits=BUILD_LIMITS, build=True)
    return None if result.ok else result
