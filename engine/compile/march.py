"""Per-march hardware profile for the static performance estimate, every figure with its source.

Horizon publishes a headline int8 throughput per board; DDR bandwidth and on-chip memory are not
published per BPU, so those are stated as assumptions (derived from the board's memory type where
one is known). Every figure carries `source`: ``public: …`` (where it was read), ``vendor: …``
(the vendor's headline number, not re-checked here) or ``assumption: …``. The perf report
prints the sources beside the numbers, so nobody mistakes an estimate for a measurement.

Peak figures are for the whole BPU; `peak_ops(core_num)` uses `core_num / cores` of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MiB = 1 << 20
TOPS = 1e12
GBs = 1e9


@dataclass(frozen=True)
class Figure:
    value: float
    source: str


@dataclass(frozen=True)
class MarchProfile:
    march: str
    board: str
    peak_int8_ops: Figure  # ops per second (one MAC = 2 ops)
    ddr_bandwidth: Figure  # bytes per second
    onchip_memory: Figure  # bytes of SRAM / L2M the compiler can keep activations in
    cores: Figure

    def peak_ops(self, core_num: int = 1) -> float:
        cores = max(1, int(self.cores.value))
        return self.peak_int8_ops.value * min(max(1, core_num), cores) / cores

    def to_json(self) -> dict:
        return asdict(self)


_X3_DOC = "public: HorizonRDK/rdk_x3_doc docs/RDK.md (RDK X3 '5Tops', RDK Ultra '96Tops')"
_X5 = "public: D-Robotics RDK X5 material ('10 TOPS BPU')"
_VENDOR = "vendor: D-Robotics headline figure for the board, not re-checked here"
_L2M = "public (secondary): reference §7, max_l2m_size accepts up to 25165824 bytes (24 MiB) on this march"
_SRAM = "assumption: on-chip SRAM is not published; a size typical of the BPU class"
_CORES_SCHEMA = "public: reference §7 core_num range for the march"

PROFILES: dict[str, MarchProfile] = {
    "bernoulli2": MarchProfile(
        "bernoulli2", "RDK X3", Figure(5 * TOPS, _X3_DOC),
        Figure(10.7 * GBs, "assumption: 32-bit LPDDR4 at 2666 MT/s"), Figure(1 * MiB, _SRAM),
        Figure(2, "public: reference §7 (core_num 2 = dual core, X3 only)")),
    "bayes": MarchProfile(
        "bayes", "RDK Ultra", Figure(96 * TOPS, _X3_DOC),
        Figure(34.1 * GBs, "assumption: 64-bit LPDDR4X at 4266 MT/s"), Figure(8 * MiB, _SRAM),
        Figure(1, _CORES_SCHEMA)),
    "bayes-e": MarchProfile(
        "bayes-e", "RDK X5", Figure(10 * TOPS, _X5),
        Figure(17.0 * GBs, "assumption: 32-bit LPDDR4 at 4266 MT/s"), Figure(2 * MiB, _SRAM),
        Figure(1, _CORES_SCHEMA)),
    "nash-e": MarchProfile(
        "nash-e", "RDK S100", Figure(80 * TOPS, _VENDOR),
        Figure(51.2 * GBs, "assumption: 64-bit LPDDR5 at 6400 MT/s"), Figure(4 * MiB, _SRAM),
        Figure(1, _CORES_SCHEMA)),
    "nash-m": MarchProfile(
        "nash-m", "RDK S100P", Figure(128 * TOPS, _VENDOR),
        Figure(51.2 * GBs, "assumption: 64-bit LPDDR5 at 6400 MT/s"), Figure(4 * MiB, _SRAM),
        Figure(1, _CORES_SCHEMA)),
    "nash-p": MarchProfile(
        "nash-p", "RDK S600", Figure(560 * TOPS, _VENDOR),
        Figure(204.8 * GBs, "assumption: 256-bit LPDDR5 at 6400 MT/s"), Figure(24 * MiB, _L2M),
        Figure(4, _CORES_SCHEMA)),
}
_UNKNOWN = "assumption: no public figure for this march"
for _name, _cores, _l2m in (("nash-b-lite", 1, False), ("nash-b", 1, False), ("nash-b-plus", 1, False),
                            ("nash-starry-p", 4, True), ("nash-h", 4, True)):
    PROFILES[_name] = MarchProfile(
        _name, "(no board named)", Figure(32 * TOPS if _cores == 1 else 256 * TOPS, _UNKNOWN),
        Figure(51.2 * GBs if _cores == 1 else 102.4 * GBs, _UNKNOWN),
        Figure(24 * MiB, _L2M) if _l2m else Figure(4 * MiB, _SRAM), Figure(_cores, _CORES_SCHEMA))


def profile(march: str) -> MarchProfile:
    """The march's profile; an unknown march gets a labelled generic profile."""
    if march in PROFILES:
        return PROFILES[march]
    return MarchProfile(march, "(unknown march)", Figure(10 * TOPS, _UNKNOWN), Figure(17.0 * GBs, _UNKNOWN),
                        Figure(2 * MiB, _UNKNOWN), Figure(1, _UNKNOWN))
