"""Whether this CPU multiplies bfloat16 matrices in hardware, for choosing a precision.

`mixed_bfloat16` pays off on a CPU only where oneDNN's bfloat16 matrix products run on bfloat16
instructions: AMX-BF16 or AVX512-BF16 on x86 (Xeon Sapphire Rapids and newer), the BF16
extension on Arm. Without them bfloat16 is emulated and runs slower than float32: on a 2-core
Xeon VM whose CPU exposes neither, W1 trained at 65-66 images/s in bfloat16 against 197-213 in
float32 (benchmarks/compare_peers.sh; BENCHMARKS.md).
"""

CPUINFO = "/proc/cpuinfo"
BFLOAT16_FLAGS = frozenset({"amx_bf16", "avx512_bf16",  # x86 ("flags")
                            "bf16"})                    # Arm ("Features")


def cpu_flags(path=None):
    """The first processor's feature flags (x86 `flags`, Arm `Features`) in `path` (default
    `CPUINFO`) as a set; None where the file is missing or has no such line (not Linux)."""
    try:
        with open(path or CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def native_bfloat16(path=None):
    """True if the CPU has bfloat16 matrix instructions, False if it has not, None if unknown."""
    flags = cpu_flags(path)
    return None if flags is None else bool(flags & BFLOAT16_FLAGS)


def bfloat16_warning(path=None):
    """The warning for `mixed_bfloat16` on this CPU, or None where bfloat16 is native or the
    CPU's flags are unknown."""
    if native_bfloat16(path) is not False:
        return None
    flags = ", ".join(sorted(BFLOAT16_FLAGS))
    return ("mixed precision bf16 on a CPU without bfloat16 matrix instructions (none of "
            f"{flags} in {path or CPUINFO}): bfloat16 is emulated here and runs slower than "
            "float32 (W1 trained ~3x slower on such a CPU). Use float32 (--mixed-precision "
            "off) on this machine; bf16 pays off on CPUs with AMX (Xeon Sapphire Rapids or "
            "newer) and on GPUs.")
