"""Peak temporary memory of a compiled program, replayed from its scheduled HLO - as compiled, and with bf16
weights held as a GPU holds them.

XLA:CPU has no bf16 matrix multiply on most CPUs: it converts bf16 weights to float32 first (on a mesh it
converts the fsdp shard and gathers the float32 weight), and since the frozen LLM's forward and backward use
the same converted weight, the copy lives from the forward to the backward - a float32 copy of every bf16
weight at the peak (a 7B LLM: ~25 GiB). A GPU multiplies bf16 directly and gathers bf16. The fit planner
compiles on CPU, so it replays the buffer lifetimes of the scheduled program (each value lives from its
instruction to its last use; aliasing ops such as bitcast, tuple and get-tuple-element keep their operands
alive; a while loop or call adds its body's own peak) once as compiled and once with those float32 values at
their GPU size (none, or the bf16 gathered weight), and takes the difference off XLA's temporaries. The replay
of the program as compiled is returned too, so a caller can check it against
``compiled.memory_analysis().temp_size_in_bytes``.
"""

from __future__ import annotations

import dataclasses
import re

_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"%([\w.\-]+)")
_CALLED = re.compile(r"\b(?:body|condition|to_apply|branch_computations)=\{?%([\w.\-]+)")
# Ops that allocate nothing of their own: they name (part of) their operands' buffers, or are arguments/constants.
_NO_BUFFER = {"parameter", "bitcast", "get-tuple-element", "tuple", "constant", "while", "call", "conditional",
              "optimization-barrier", "after-all", "add-dependency"}
# What a parameter may pass through before XLA:CPU converts it (the SPMD partitioner gathers fsdp shards first).
_PARAMETER_PATH = {"parameter", "bitcast", "copy", "all-gather", "reshape", "transpose"}


@dataclasses.dataclass(frozen=True)
class _Instruction:
    name: str
    type: str
    op: str
    operands: tuple[str, ...]
    called: tuple[str, ...]
    root: bool


@dataclasses.dataclass(frozen=True)
class TempReplay:
    """Peak live bytes of the program's temporaries as compiled, and without XLA:CPU's parameter upcasts."""

    peak: int
    peak_without_upcasts: int
    upcast_bytes: int  # the bytes all of them take beyond what a GPU holds (live at the peak or not)
    upcasts: int  # float32 values derived from bf16 parameters


def _bytes(type_text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(type_text):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * _BYTES.get(dtype, 4)
    return total


def _operand_text(op: str, rest: str) -> str:
    """The operand list of ``op(...)`` (the text up to the matching parenthesis)."""
    depth = 1
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[:i]
    return rest


def _parse(text: str) -> tuple[dict[str, list[_Instruction]], str]:
    computations: dict[str, list[_Instruction]] = {}
    entry, name, body = "", None, []
    for line in text.splitlines():
        if name is None:
            header = _HEADER.match(line)
            if header:
                name, body = header.group(2), []
                entry = name if header.group(1) else entry
        elif line.startswith("}"):
            computations[name], name = body, None
        else:
            match = _INSTRUCTION.match(line)
            if match:
                root, result, type_text, op, rest = match.groups()
                called = tuple(_CALLED.findall(rest)) if op in ("while", "call", "conditional") else ()
                body.append(_Instruction(result, type_text, op, tuple(_NAME.findall(_operand_text(op, rest))),
                                         called, bool(root)))
    if not entry:
        raise ValueError("no ENTRY computation in the compiled HLO text; pass compiled.as_text()")
    return computations, entry


def _peak(computations: dict[str, list[_Instruction]], name: str, sizes: dict[str, int], cache: dict[str, int],
          is_entry: bool) -> int:
    """Peak live bytes of computation ``name``; ``sizes`` replaces the byte size of the instructions it names."""
    if name in cache:
        return cache[name]
    instructions = computations[name]
    position = {ins.name: i for i, ins in enumerate(instructions)}
    end = len(instructions)
    last = {ins.name: (end if ins.root and is_entry else i) for i, ins in enumerate(instructions)}
    for i, ins in enumerate(instructions):
        for operand in ins.operands:
            if operand in position:
                last[operand] = max(last[operand], i)
    for ins in reversed(instructions):  # a buffer lives as long as the ops that alias it
        if ins.op in _NO_BUFFER:
            for operand in ins.operands:
                if operand in position:
                    last[operand] = max(last[operand], last[ins.name])
    frees: dict[int, int] = {}
    live = best = 0
    for i, ins in enumerate(instructions):
        size = 0 if ins.op in _NO_BUFFER else sizes.get(ins.name, _bytes(ins.type))
        inner = max((_peak(computations, c, sizes, cache, False) for c in ins.called if c in computations),
                    default=0)
        live += size
        best = max(best, live + inner)
        frees[last[ins.name]] = frees.get(last[ins.name], 0) + size
        live -= frees.pop(i, 0)
    cache[name] = best
    return best


def _bf16_weight_sizes(instructions: list[_Instruction]) -> dict[str, int]:
    """What a GPU would hold instead of XLA:CPU's float32 values derived from bf16 entry parameters.

    Along a chain parameter -> convert / copy / reshape / transpose / all-gather, a float32 value before any
    gather stands for the bf16 parameter itself (an argument: 0 bytes more), and one at or after a gather for
    the gathered bf16 weight a GPU keeps while it is used (half its bytes).
    """
    gathered: dict[str, bool] = {}  # values derived from a bf16 parameter -> whether a gather is on the way
    sizes: dict[str, int] = {}
    for ins in instructions:
        if ins.op == "parameter":
            if ins.type.startswith("bf16["):
                gathered[ins.name] = False
            continue
        converts = ins.op == "convert" or (ins.op == "fusion" and "convert" in ins.name)
        if len(ins.operands) != 1 or ins.operands[0] not in gathered or not (converts or ins.op in _PARAMETER_PATH):
            continue
        gathered[ins.name] = gathered[ins.operands[0]] or ins.op == "all-gather"
        if ins.type.startswith("f32[") and ins.op not in _NO_BUFFER:
            sizes[ins.name] = _bytes(ins.type) // 2 if gathered[ins.name] else 0
    return sizes


def replay_temporaries(hlo_text: str) -> TempReplay:
    """Replay the entry computation of ``compiled.as_text()`` (a scheduled module) as compiled and with bf16
    weights as a GPU holds them."""
    computations, entry = _parse(hlo_text)
    sizes = _bf16_weight_sizes(computations[entry])
    by_name = {ins.name: ins for ins in computations[entry]}
    return TempReplay(
        peak=_peak(computations, entry, {}, {}, True),
        peak_without_upcasts=_peak(computations, entry, sizes, {}, True),
        upcast_bytes=sum(_bytes(by_name[n].type) - size for n, size in sizes.items()),
        upcasts=len(sizes),
    )
