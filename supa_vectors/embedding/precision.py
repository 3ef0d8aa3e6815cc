"""Which graph ``OnnxEmbedder`` runs: int8 where the CPU multiplies int8 natively, fp32 elsewhere.

onnxruntime's int8 matrix multiply (``DynamicQuantizeMatMul``) beats its fp32 one only with int8
dot-product instructions: AVX-512 VNNI, AVX-VNNI or AMX. Without them the u8s8 kernel runs at the
fp32 rate, and fp32 is the exact one (docs/decisions/0026-int8-by-cpu.md has the figures). The CPU's
features are read from the operating system, never from a CPUID probe of our own:

* Linux: the ``flags`` line of ``/proc/cpuinfo`` (the kernel's names, e.g. ``avx512_vnni``);
* macOS: ``sysctl machdep.cpu.features machdep.cpu.leaf7_features`` (Intel Macs; names upper case
  without underscores, mapped to the Linux spelling);
* anything else (Windows, ARM): no features known, so fp32, the safe choice.

ARM's dot-product instructions (``asimddp``, Apple's ``FEAT_DotProd``) also have int8 kernels in
onnxruntime, but no ARM machine was measured, so ``auto`` keeps fp32 there.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from supa_vectors.errors import ConfigurationError, InvalidInputError

__all__ = [
    "INT8_DOT_PRODUCT",
    "PRECISION_ENV",
    "Choice",
    "Precision",
    "choose_variant",
    "cpu_features",
]

Precision = Literal["auto", "fp32", "int8"]
Variant = Literal["fp32", "int8"]
PRECISIONS: Final[tuple[str, ...]] = get_args(Precision)

# Overrides ``precision="auto"`` (an explicit "fp32" or "int8" argument still wins): pins one graph
# for a whole deployment, e.g. fp32 everywhere so that every machine's vectors are bit-identical.
PRECISION_ENV: Final = "SUPA_VECTORS_EMBEDDING_PRECISION"

# Linux /proc/cpuinfo names of the instructions that make int8 GEMM faster than fp32.
INT8_DOT_PRODUCT: Final = ("avx512_vnni", "avx_vnni", "amx_int8")

# macOS sysctl names -> the Linux spelling.
_MACOS_NAMES: Final = {"AVX512VNNI": "avx512_vnni", "AVXVNNI": "avx_vnni", "AMX_INT8": "amx_int8"}


@dataclass(frozen=True)
class Choice:
    """The graph to run and why, for logs, ``repr`` and benchmark reports."""

    variant: Variant
    reason: str


def cpu_features() -> frozenset[str]:
    """This machine's CPU feature flags, lower case in the Linux spelling; empty when unknown."""
    return _cpu_features(sys.platform)


@functools.cache
def _cpu_features(platform: str) -> frozenset[str]:
    if platform.startswith("linux"):
        try:
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
        except OSError:
            pass
        return frozenset()
    if platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        return frozenset(_MACOS_NAMES.get(name, name.lower()) for name in out.split())
    return frozenset()


def choose_variant(
    precision: str,
    *,
    features: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Choice:
    """Resolve ``precision`` ("auto", "fp32" or "int8") to the graph to run.

    An explicit "fp32"/"int8" wins; "auto" takes ``$SUPA_VECTORS_EMBEDDING_PRECISION`` when set, else
    int8 if ``features`` (default: this CPU's) include an int8 dot-product instruction. ``features``
    and ``environ`` are parameters so that tests choose the CPU instead of depending on it.
    """
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return Choice("int8" if precision == "int8" else "fp32", "asked for")
    env = os.environ if environ is None else environ
    override = env.get(PRECISION_ENV, "").strip().lower()
    if override and override != "auto":
        if override not in PRECISIONS:
            raise ConfigurationError(
                f"{PRECISION_ENV}={env[PRECISION_ENV]!r}: use one of {', '.join(PRECISIONS)}"
            )
        return Choice("int8" if override == "int8" else "fp32", f"{PRECISION_ENV}={override}")
    have = cpu_features() if features is None else frozenset(features)
    found = [flag for flag in INT8_DOT_PRODUCT if flag in have]
    if found:
        return Choice("int8", f"auto: the CPU has {', '.join(found)}")
    return Choice("fp32", "auto: the CPU has no int8 dot-product instructions (VNNI, AMX)")
