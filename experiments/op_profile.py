"""Where a step's time goes, op class by op class, in jaxswin (XLA's profile) and the PyTorch twin
(torch.profiler): the --profile part of experiments.bench.

Both sides name every op by the model module it came from and the operation it is, and one
classifier (`op_class`) turns that into the classes below, so the two columns count the same
thing:
- jaxswin: XLA's profiler times each executed HLO instruction (a fusion, a dot, a convolution ...);
  its metadata names the Flax module path and the JAX primitive (Flax puts module names in the
  name stack). A fusion is named by the dot or convolution inside it, else by its own op. Ops
  under `transpose(...)` are the backward pass. Ops XLA makes without metadata (some layout
  copies and custom fusions) are counted as unattributed, not guessed.
- torch: forward hooks wrap every module in a profiler range; an aten op belongs to the innermost
  module around it, and is named by the outermost aten call under that module (aten::linear, not
  the addmm inside). A backward op is traced to its forward op through the autograd node's
  sequence number. Time is each op's self CPU time; a module range's own self time (Python and
  dispatch between kernels) is the "framework overhead" class.

XLA runs independent instructions concurrently on the machine's threads, so JAX's per-op sums can
exceed the step's wall time; torch runs ops one after another. The profiler adds a little to
torch's per-op time.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from dataclasses import dataclass

from jaxswin.models.layers import RESIZE_SCOPE  # bilinear resizes (torch: the aten op)

CLASSES = (
    "attention matmuls (q·kᵀ, attn·v)",
    "linear layers (qkv, proj, MLP, merging)",
    "Log-CPB (bias MLP, gather, sigmoid)",
    "attention softmax, scaling, layouts",
    "layer norms",
    "3×3 convolutions",
    "1×1 and patch-embedding convolutions",
    "batch norms",
    "bilinear resizes",
    "other in the model (shifts, windows, GELU, residuals, concat)",
    "framework overhead (Python, dispatch)",
    "loss, optimizer, EMA",
    "unattributed (ops XLA made without source metadata)",
)
DIRECTIONS = ("forward", "backward")
DOT_OPS = {"dot_general", "aten::linear", "aten::matmul", "aten::bmm", "aten::mm", "aten::addmm",
           "aten::einsum"}
LINEAR_OPS = {"aten::linear", "aten::addmm", "aten::mm"}
CONV_OPS = {"conv_general_dilated", "aten::conv2d", "aten::convolution", "aten::_convolution"}
CPB_OPS = {"gather", "logistic", "aten::index", "aten::sigmoid"}


@dataclass(frozen=True)
class Site:
    """Where an op comes from: the model module path (None outside the model), the operation
    (JAX primitive or aten op) and, for a convolution, its kernel height."""

    path: tuple[str, ...] | None
    op: str
    kernel: int | None = None


def op_class(site: Site) -> str:
    if site.path is None:
        return CLASSES[11] if site.op else CLASSES[12]
    if site.op == "module":
        return CLASSES[10]
    leaf = site.path[-1] if site.path else ""
    if RESIZE_SCOPE in site.path or "upsample_bilinear" in site.op:
        return CLASSES[8]
    if any(p.startswith("cpb") for p in site.path) or (leaf == "attn" and site.op in CPB_OPS):
        return CLASSES[2]
    if site.op in CONV_OPS:
        return CLASSES[5] if site.kernel == 3 else CLASSES[6]
    if site.op in DOT_OPS:
        return CLASSES[0] if leaf == "attn" and site.op not in LINEAR_OPS else CLASSES[1]
    if any(p.startswith("norm") for p in site.path):
        return CLASSES[4]
    if "bn" in site.path:
        return CLASSES[7]
    if leaf == "attn":
        return CLASSES[3]
    return CLASSES[9]


def per_step(times: dict, steps: int) -> dict:
    """{class: {direction: ms per step}} from {(class, direction): total ns}."""
    out = {}
    for (name, direction), ns in sorted(times.items()):
        out.setdefault(name, {})[direction] = ns / steps / 1e6
    return out


# ----------------------------------------------------------------------------- jax

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(([^)]*)\)")
COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
JAX_SCOPES = {"while", "body", "cond", "closed_call", "checkpoint", "remat"}  # not modules
KIND_OF_OPCODE = {"dot": "dot_general", "convolution": "conv_general_dilated"}


@dataclass
class Instruction:
    opcode: str
    op_name: str
    window: int | None
    calls: list[str]
    operands: list[str]
    kernel_out: int | None = None  # a convolution's output height, the kernel's in a weight gradient


def parse_hlo(text: str) -> tuple[str, dict[str, Instruction], dict[str, list[str]]]:
    """(module name, instructions by name, instruction names by computation) of HLO text."""
    module = re.search(r"HloModule ([\w.\-]+)", text).group(1)
    instructions, computations, current = {}, {}, None
    for line in text.splitlines():
        if not line.startswith(" ") and (header := COMPUTATION.match(line)):
            current = computations.setdefault(header.group(1), [])
            continue
        found = INSTRUCTION.match(line)
        if current is None or not found:
            continue
        name, opcode, operands = found.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        window = re.search(r"window=\{size=(\d+)x", line)
        instructions[name] = Instruction(
            opcode, op_name.group(1) if op_name else "", int(window.group(1)) if window else None,
            re.findall(r"calls=%?([\w.\-]+)", line), re.findall(r"%([\w.\-]+)", operands),
            output_height(line) if opcode == "convolution" else None)
        current.append(name)
    return module, instructions, computations


def output_height(line: str) -> int | None:
    """The size of a convolution's first spatial output dimension ('0' in dim_labels ...->b01f)."""
    shape = re.search(r"= \w+\[([\d,]*)\]", line)
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", line)
    if not (shape and labels and "0" in labels.group(1)):
        return None
    return int(shape.group(1).split(",")[labels.group(1).index("0")])


def jax_site(op_name: str, root: str, opcode: str, kernel: int | None) -> tuple[Site, str]:
    """The Site and direction of an HLO op_name such as
    jit(step)/transpose(jvp(DualSwinFusionSeg))/rgb_encoder/layers_0/.../attn/qkv/dot_general;
    the module path keeps the names of modules only (not jit(_einsum), einsum specs, loops)."""
    if not op_name:
        return Site(None, ""), "forward"  # its direction is unknown too: counted in one column
    parts = op_name.split("/")
    direction = "backward" if "transpose(" in op_name else "forward"
    kind = KIND_OF_OPCODE.get(opcode, parts[-1])
    start = next((i for i, p in enumerate(parts) if root in p), None)
    if start is None:
        return Site(None, kind), direction
    path = tuple(p for p in parts[start + 1:-1] if IDENTIFIER.match(p) and p not in JAX_SCOPES)
    return Site(path, kind, kernel), direction


def jax_sites(hlo_text: str, root: str) -> tuple[str, dict[str, tuple[Site, str]]]:
    """(module name, {instruction name: (Site, direction)}) for every instruction of compiled HLO.

    A fusion is the convolution or dot inside it, else itself. XLA leaves some ops it makes
    without metadata: a copy of a parameter (an optimizer-state layout copy) is named by the
    parameter, so it falls outside the model; a convolution without metadata is a weight
    gradient, classed by the kernel it outputs; the others stay unattributed rather than guessed.
    Every op of a convolution (the kernel flips and pads around the backward's) takes the kernel
    of its module's forward convolution: the weight gradient's own window is the map."""
    module, instructions, computations = parse_hlo(hlo_text)

    def members(name, seen=()):
        for called in instructions[name].calls:
            for child in computations.get(called, []):
                if child not in seen:
                    yield child
                    yield from members(child, (*seen, child))

    def op_name(name):
        own = instructions[name]
        inner = (instructions[m].op_name for m in members(name) if instructions[m].op_name)
        state = (instructions[o].op_name for o in own.operands
                 if o in instructions and instructions[o].opcode == "parameter")
        return own.op_name or next(inner, "") or next(state, "")

    sites = {}
    for name, inst in instructions.items():
        inner = list(members(name))
        core = next((instructions[m] for kind in KIND_OF_OPCODE for m in inner
                     if instructions[m].opcode == kind), inst)
        kernel = core.window if core.opcode == "convolution" else None
        source = core.op_name or op_name(name)
        if core.opcode == "convolution" and not source:
            # XLA's rewrite of a weight gradient into a convolution over the whole map drops the
            # metadata; its output is the kernel (Cin, kh, kw, Cout). Class by that, no module.
            sites[name] = (Site((), KIND_OF_OPCODE["convolution"], core.kernel_out), "backward")
            continue
        sites[name] = jax_site(source, root, core.opcode, kernel)
    forward_kernel = {site.path: site.kernel for site, direction in sites.values()
                      if site.kernel is not None and direction == "forward"}
    for name, (site, direction) in sites.items():
        if site.op in CONV_OPS and site.path in forward_kernel:
            sites[name] = (Site(site.path, site.op, forward_kernel[site.path]), direction)
    return module, sites


def jax_op_times(compiled, run, steps: int, root: str) -> dict:
    """ms per call of `run()` (which runs `compiled` and waits), by op class and direction."""
    import jax

    module, sites = jax_sites(compiled.as_text(), root)
    folder = tempfile.mkdtemp(prefix="jaxswin-profile-")
    with jax.profiler.trace(folder):
        for _ in range(steps):
            run()
    (path,) = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
    profile = jax.profiler.ProfileData.from_file(path)
    times = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if stats.get("hlo_module") != module or stats.get("hlo_op") not in sites:
                    continue
                site, direction = sites[stats["hlo_op"]]
                times[op_class(site), direction] += event.duration_ns
    return per_step(times, steps)


# ----------------------------------------------------------------------------- torch

MODULE_RANGE = "module::"
BACKWARD_NODE = "autograd::engine::evaluate_function: "


def wrap_modules(model) -> list:
    """Puts every module's forward in a profiler range named after its path; the hook handles."""
    import torch

    open_ranges = collections.defaultdict(list)
    handles = []
    for name, module in model.named_modules():
        label = MODULE_RANGE + (f"model.{name}" if name else "model")

        def enter(mod, _inputs, label=label):
            scope = torch.autograd.profiler.record_function(label)
            scope.__enter__()
            open_ranges[id(mod)].append(scope)

        def leave(mod, _inputs, _output):
            open_ranges[id(mod)].pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def torch_site(event) -> Site:
    """The Site of a forward event: its innermost module and the outermost aten op under it."""
    chain = []
    node = event
    while node is not None and not node.name.startswith(MODULE_RANGE):
        chain.append(node)
        node = node.cpu_parent
    if node is None:
        return Site(None, event.name)
    path = tuple(node.name[len(MODULE_RANGE):].split("."))[1:]
    if not chain:
        return Site(path, "module")
    top = chain[-1]
    kernel = None
    if top.name in CONV_OPS and len(top.input_shapes) > 1 and len(top.input_shapes[1]) == 4:
        kernel = top.input_shapes[1][2]
    return Site(path, top.name, kernel)


def torch_op_times(model, run, steps: int) -> dict:
    """ms per call of `run()`, by op class and direction (self CPU time of every op)."""
    from torch.profiler import ProfilerActivity, profile

    handles = wrap_modules(model)
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                run()
    finally:
        for handle in handles:
            handle.remove()
    events = list(prof.events())
    backward_nodes = [_under_backward(event) for event in events]
    forward_by_sequence = {}
    for event, node in zip(events, backward_nodes):
        if event.sequence_nr >= 0 and node is None:
            forward_by_sequence.setdefault(event.sequence_nr, event)
    times = collections.Counter()
    for event, node in zip(events, backward_nodes):
        if event.self_cpu_time_total <= 0:
            continue
        if node is None:
            site, direction = torch_site(event), "forward"
        else:
            forward = forward_by_sequence.get(node.sequence_nr)
            site = torch_site(forward) if forward is not None else Site(None, node.name)
            direction = "backward"
            if site.op == "module":  # the node's forward op is a module range: not an op
                site = Site(site.path, node.name)
        times[op_class(site), direction] += event.self_cpu_time_total * 1e3  # us -> ns
    return per_step(times, steps)


def _under_backward(event):
    node = event
    while node is not None:
        if node.name.startswith(BACKWARD_NODE):
            return node
        node = node.cpu_parent
    return None


# ----------------------------------------------------------------------------- report


def markdown(rows: list[dict], phase: str) -> list[str]:
    """A table of ms per step by op class, one forward and one backward column per bench row
    that has a profile of `phase` ("train" or "infer")."""
    profiled = [r for r in rows if r.get("op_ms", {}).get(phase)]
    if not profiled:
        return []
    columns = [(r, d) for r in profiled for d in (DIRECTIONS if phase == "train" else DIRECTIONS[:1])]
    heads = [f"{r['framework']} {r['mode']} {'fwd' if d == 'forward' else 'bwd'}"
             for r, d in columns]
    lines = [f"| {phase} ms per step, by op class | " + " | ".join(heads) + " |",
             "|---|" + "---|" * len(columns)]
    for name in CLASSES:
        cells = [r["op_ms"][phase].get(name, {}).get(d) for r, d in columns]
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(
                "" if c is None else f"{c:.1f}" for c in cells) + " |")
    totals = [sum(v.get(d, 0) for v in r["op_ms"][phase].values()) for r, d in columns]
    lines.append("| sum of op times | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
    return lines
