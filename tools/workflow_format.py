"""Convert ComfyUI workflows between the UI format (what the editor saves) and the API prompt format.

``ui_to_api(workflow, object_info)`` reproduces what the ComfyUI frontend (comfyui-frontend-package 1.32.9)
builds in ``app.graphToPrompt()`` for a plain graph (no subgraphs, no group nodes):

* Widgets are rebuilt from ``object_info`` the way the frontend creates them: inputs in ``input_order``
  (required, then optional; without ``input_order``: required then optional in dict order), one widget per
  input whose type has a widget (INT, FLOAT, BOOLEAN, STRING, COMBO and a few UI-only kinds) unless it has
  ``forceInput``. An INT input with ``control_after_generate`` (or, when the flag is absent, named ``seed`` /
  ``noise_seed``) is followed by a ``control_after_generate`` widget; a COMBO input with
  ``control_after_generate`` by that widget and a ``control_filter_list`` widget. A combo with
  ``image_upload`` / ``video_upload`` / ``animated_image_upload`` gets an ``upload`` button widget (value
  ``"image"``), appended after the required inputs (after all inputs when ``input_order`` exists), and
  its combo reports an empty value as the default (``"undefined"`` when the list is empty) and non-input
  folders annotated (``"x.png [output]"``). ``widgets_values`` are matched to these widgets by position,
  as ``LGraphNode.configure`` does (missing values keep the defaults; a dict is ignored); the control,
  filter and upload widgets are in ``widgets_values`` but not in the prompt. KSampler's legacy
  ``sample_`` sampler names and boolean control values are fixed as in ``app.loadGraphData``.
* Values: list values are wrapped as ``{"__value__": [...]}``; STRING widgets with ``dynamicPrompts`` get
  the frontend's comment stripping and ``{a|b}`` choice (random, like the frontend).
* Links: an input's link is resolved through legacy ``Reroute`` nodes and through bypassed (mode 4) nodes
  (matching the first input of the same type, as ``ExecutableNodeDTO`` does); muted (mode 2) and bypassed
  nodes are dropped, as are inputs whose source was dropped. A ``PrimitiveNode`` writes its value into the
  widget it feeds. Notes are ignored.

``api_to_ui(prompt, object_info)`` goes the other way, to author workflows: it writes a 0.4 UI workflow
whose ``graphToPrompt`` in the frontend gives back ``prompt`` (nodes laid out left to right by depth).
Use integer-like node ids (``GraphBuilder(prefix="")``); other ids are renumbered.

Not handled: subgraphs and group nodes (rejected), widgets that frontend extensions add to particular core
nodes (Load3D, Preview3D, PreviewAny, WebcamCapture, audio upload, remote combos with refresh buttons as in
LoadImageOutput), PrimitiveNode's "Run widget replace on values" (%date% etc.).

CLI::

    python tools/workflow_format.py to-api WORKFLOW.json --object-info http://127.0.0.1:8188 [-o out.json]
    python tools/workflow_format.py to-ui PROMPT.json --object-info object_info.json [-o out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PACK_ID = "comfyui-video-edit"

# Input types the 1.32.9 frontend draws a widget for (scripts/widgets.ts ComfyWidgets; IMAGEUPLOAD is the
# upload button the Comfy.UploadImage extension adds).
WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "IMAGEUPLOAD", "COLOR",
                "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA"}
# Frontend-only node types (never in a prompt).
VIRTUAL_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SEED_NAMES = ("seed", "noise_seed")
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
MODE_NEVER, MODE_BYPASS = 2, 4


class WorkflowFormatError(ValueError):
    pass


# ----- the frontend's node layout -------------------------------------------------------------------------------

@dataclass
class Widget:
    name: str
    kind: str            # "value" (an input's widget), "control", "filter", "upload"
    default: object
    input: str           # the input this widget belongs to
    serialize: bool = True   # goes into the prompt (widget.options.serialize !== false)
    dynamic_prompts: bool = False
    upload: dict | None = None   # for a media combo with an upload button: {"folder", "allow_batch"}
    multiline: bool = False


@dataclass
class Socket:
    name: str
    type: str
    widget: str | None = None    # the widget this socket converts (None: a plain link input)


@dataclass
class NodeLayout:
    type: str
    widgets: list[Widget] = field(default_factory=list)
    sockets: list[Socket] = field(default_factory=list)          # the runtime node.inputs
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    display_name: str = ""
    python_module: str = ""

    def widget(self, name: str) -> Widget | None:
        return next((w for w in self.widgets if w.name == name and w.kind == "value"), None)

    def socket(self, name: str) -> Socket | None:
        return next((s for s in self.sockets if s.name == name), None)


def _is_combo(spec) -> bool:
    return isinstance(spec, (list, tuple)) and len(spec) > 0 and (isinstance(spec[0], (list, tuple)) or spec[0] == "COMBO")


def _combo_options(spec) -> list:
    if isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    return list((spec[1] if len(spec) > 1 else {}).get("options") or [])


def _spec_type(spec) -> str:
    if _is_combo(spec):
        return "COMBO"
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], str):
        return spec[0]
    return "UNKNOWN"


def _default(spec, type_: str):
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if type_ == "COMBO":
        if opts.get("default"):
            return opts["default"]
        options = _combo_options(spec)
        return options[0] if options else None
    if type_ in ("INT", "FLOAT"):
        return opts.get("default") if opts.get("default") is not None else 0
    if type_ == "BOOLEAN":
        return opts.get("default") if opts.get("default") is not None else False
    if type_ in ("STRING", "MARKDOWN", "TEXTAREA"):
        return opts.get("default") if opts.get("default") is not None else ""
    return opts.get("default")


def node_layout(node_type: str, info: dict) -> NodeLayout:
    """The widgets, input sockets and outputs the 1.32.9 frontend creates for ``info`` (one object_info entry)."""
    inputs = info.get("input") or {}
    required = dict(inputs.get("required") or {})
    optional = dict(inputs.get("optional") or {})
    # Comfy.UploadImage: a media combo in `required` gets an `upload` input (appended to `required`).
    for name, spec in list(required.items()):
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if _is_combo(spec) and any(opts.get(flag) is True for flag in UPLOAD_FLAGS):
            required["upload"] = ["IMAGEUPLOAD", {**opts, "imageInputName": name}]
            break
    specs: dict[str, tuple[list, bool]] = {}
    for name, spec in required.items():
        specs[name] = (spec, False)
    for name, spec in optional.items():
        specs[name] = (spec, True)
    # getOrderedInputSpecs (workbench/utils/nodeDefOrderingUtil.ts)
    order = info.get("input_order")
    if order:
        names = [n for n in order.get("required", []) if n in specs and not specs[n][1]]
        names += [n for n in order.get("optional", []) if n in specs and specs[n][1]]
        names += [n for n in specs if n not in names]
    else:
        names = list(specs)

    layout = NodeLayout(type=node_type, display_name=info.get("display_name") or node_type,
                        python_module=info.get("python_module") or "")
    has_widget = {}
    for name in names:
        spec, _ = specs[name]
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        type_ = _spec_type(spec)
        widget_type = opts.get("widgetType") or type_
        has_widget[name] = widget_type in WIDGET_TYPES and not opts.get("forceInput")
    # Sockets without a widget first, then each widget with its socket (ComfyNode.#addInputs).
    for name in names:
        if not has_widget[name]:
            layout.sockets.append(Socket(name, _spec_type(specs[name][0])))
    for name in names:
        if not has_widget[name]:
            continue
        spec, _ = specs[name]
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        type_ = _spec_type(spec)
        widget_type = opts.get("widgetType") or type_
        if widget_type == "IMAGEUPLOAD":
            layout.widgets.append(Widget(name, "upload", "image", name, serialize=False))
            target = next((w for w in layout.widgets if w.kind == "value" and w.name == opts.get("imageInputName")),
                          None)
            if target is not None:
                target.upload = {"folder": opts.get("image_folder") or "input",
                                 "allow_batch": bool(opts.get("allow_batch"))}
        else:
            layout.widgets.append(Widget(name, "value", _default(spec, type_), name,
                                         dynamic_prompts=bool(opts.get("dynamicPrompts")),
                                         multiline=bool(opts.get("multiline")) or widget_type in ("MARKDOWN", "TEXTAREA")))
            control = opts.get("control_after_generate")
            if widget_type == "INT" and control is None:
                control = name in SEED_NAMES
            if control and widget_type in ("INT", "COMBO"):
                control_name = control if isinstance(control, str) else "control_after_generate"
                if not isinstance(control, str) and opts.get("control_prefix"):
                    control_name = f"{opts['control_prefix']} {control_name}"
                layout.widgets.append(Widget(control_name, "control", "randomize", name, serialize=False))
                if widget_type == "COMBO":
                    filter_name = "control_filter_list"
                    if isinstance(opts.get("control_filter_list"), str):
                        filter_name = opts["control_filter_list"]
                    elif opts.get("control_prefix"):
                        filter_name = f"{opts['control_prefix']} {filter_name}"
                    layout.widgets.append(Widget(filter_name, "filter", "", name, serialize=False))
        if not opts.get("socketless"):
            layout.sockets.append(Socket(name, type_, widget=name))

    out_types = info.get("output") or []
    out_names = info.get("output_name") or []
    for i, t in enumerate(out_types):
        type_ = "COMBO" if isinstance(t, (list, tuple)) else t
        name = out_names[i] if i < len(out_names) and out_names[i] else f"output_{i}"
        layout.outputs.append((name, type_))
    return layout


# ----- dynamic prompts (packages/shared-frontend-utils/src/formatUtil.ts processDynamicPrompt) ---------------------

def process_dynamic_prompt(text: str, rng: random.Random | None = None) -> str:
    rng = rng or random
    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    pos = 0

    def escape():
        nonlocal pos
        char = text[pos] if pos < len(text) else "undefined"
        pos += 1
        return "\\" + char

    def choice_block():
        nonlocal pos
        options, choice, depth = [], "", 0
        while pos < len(text):
            char = text[pos]
            pos += 1
            if char == "\\":
                choice += escape()
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(choice)
                choice = ""
                continue
            choice += char
        options.append(choice)
        return process_dynamic_prompt(options[math.floor(rng.random() * len(options))], rng)

    result = ""
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\":
            result += escape()
        elif char == "{":
            result += choice_block()
        else:
            result += char
    return re.sub(r"\\([{}|])", r"\1", result)


# ----- UI -> API -------------------------------------------------------------------------------------------------

def _types_match(a, b) -> bool:
    """LiteGraph.isValidConnection."""
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_types_match(x, y) for x in a.split(",") for y in b.split(","))


class _Graph:
    def __init__(self, workflow: dict, object_info: dict):
        if workflow.get("definitions", {}).get("subgraphs"):
            raise WorkflowFormatError("subgraphs are not supported")
        self.object_info = object_info
        self.nodes = {}
        for node in workflow.get("nodes", []):
            self.nodes[node["id"]] = node
        self.links = {}
        for link in workflow.get("links", []):
            if isinstance(link, dict):
                self.links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"],
                                          link["target_slot"], link.get("type"))
            else:
                self.links[link[0]] = tuple(link[1:6])
        self.layouts: dict[int, NodeLayout | None] = {}
        self.values: dict[int, dict[str, object]] = {}
        self.runtime_inputs: dict[int, list[tuple[str, object, int | None]]] = {}
        for nid, node in self.nodes.items():
            self._setup(nid, node)

    def _setup(self, nid, node):
        type_ = node.get("type")
        info = self.object_info.get(type_)
        links_by_name = {}
        extra = []
        for inp in node.get("inputs") or []:
            links_by_name[inp.get("name")] = inp.get("link")
        if info is None:
            self.layouts[nid] = None
            self.runtime_inputs[nid] = [(i.get("name"), i.get("type"), i.get("link")) for i in node.get("inputs") or []]
            return
        layout = node_layout(type_, info)
        self.layouts[nid] = layout
        defined = {s.name for s in layout.sockets}
        runtime = [(s.name, s.type, links_by_name.get(s.name)) for s in layout.sockets]
        for inp in node.get("inputs") or []:
            if inp.get("name") not in defined:
                extra.append((inp.get("name"), inp.get("type"), inp.get("link")))
        self.runtime_inputs[nid] = runtime + extra
        # widget values: LGraphNode.configure assigns widgets_values by position
        values = {id(w): w.default for w in layout.widgets}
        wv = node.get("widgets_values")
        if isinstance(wv, list):
            for w, v in zip(layout.widgets, wv):
                values[id(w)] = v
        if type_ in ("KSampler", "KSamplerAdvanced"):   # app.loadGraphData's legacy fixes
            for w in layout.widgets:
                v = values[id(w)]
                if w.name == "sampler_name" and isinstance(v, str) and v.startswith("sample_"):
                    values[id(w)] = v[7:]
                if w.name == "control_after_generate" and isinstance(v, bool):
                    values[id(w)] = "randomize" if v else "fixed"
        for w in layout.widgets:
            if w.upload is not None:
                values[id(w)] = _upload_value(w, values[id(w)])
        self.values[nid] = {w.name: values[id(w)] for w in layout.widgets if w.kind == "value"}

    def is_virtual(self, nid) -> bool:
        return self.layouts.get(nid) is None and self.nodes[nid].get("type") in VIRTUAL_TYPES

    def origin(self, link_id):
        link = self.links.get(link_id)
        if link is None:
            raise WorkflowFormatError(f"link {link_id} does not exist")
        return link

    def apply_primitives(self):
        """PrimitiveNode.applyToGraph: copy its value into every widget it is linked to."""
        for nid, node in self.nodes.items():
            if node.get("type") != "PrimitiveNode":
                continue
            wv = node.get("widgets_values")
            if not isinstance(wv, list) or not wv:
                continue
            value = wv[0]
            for out in node.get("outputs") or []:
                for link_id in out.get("links") or []:
                    _, _, target, _, _ = self.origin(link_id)
                    tnode = self.nodes.get(target)
                    if tnode is None or self.layouts.get(target) is None:
                        continue
                    inp = next((i for i in tnode.get("inputs") or [] if i.get("link") == link_id), None)
                    if inp is None:
                        continue
                    wname = (inp.get("widget") or {}).get("name")
                    if wname and wname in self.values[target]:
                        self.values[target][wname] = value

    def resolve_input(self, nid, slot, visited, type_=None):
        """ExecutableNodeDTO.resolveInput: (origin_id, origin_slot) or None."""
        key = (nid, "I", slot)
        if key in visited:
            raise WorkflowFormatError(f"circular reference while resolving input {slot} of node {nid}")
        visited.add(key)
        inputs = self.runtime_inputs[nid]
        if slot >= len(inputs):
            raise WorkflowFormatError(f"node {nid} has no input slot {slot}")
        name, itype, link_id = inputs[slot]
        if link_id is None:
            return None
        origin_id, origin_slot, _, _, _ = self.origin(link_id)
        if origin_id not in self.nodes:
            raise WorkflowFormatError(f"link {link_id} comes from missing node {origin_id}")
        return self.resolve_output(origin_id, origin_slot, type_ if type_ is not None else itype, visited)

    def resolve_output(self, nid, slot, type_, visited):
        key = (nid, "O", slot)
        if key in visited:
            raise WorkflowFormatError(f"circular reference while resolving output {slot} of node {nid}")
        visited.add(key)
        node = self.nodes[nid]
        if node.get("mode") == MODE_BYPASS and not self.is_virtual(nid):
            index = self._bypass_slot(nid, slot, type_)
            if index == -1:
                return None
            return self.resolve_input(nid, index, visited)
        if self.is_virtual(nid):
            if node.get("type") == "Reroute" and self.runtime_inputs[nid]:
                return self.resolve_input(nid, 0, visited, type_)
            return None
        return (nid, slot)

    def _bypass_slot(self, nid, slot, type_):
        inputs = self.runtime_inputs[nid]
        layout = self.layouts[nid]
        if layout is not None and slot < len(layout.outputs):
            out_type = layout.outputs[slot][1]
        else:
            outs = self.nodes[nid].get("outputs") or []
            out_type = outs[slot].get("type") if slot < len(outs) else "*"
        if type_ in ("*", ""):
            return slot if len(inputs) > slot else 0
        if slot < len(inputs) and _types_match(inputs[slot][1], out_type) and _types_match(inputs[slot][1], type_):
            return slot
        for i, (_, t, _) in enumerate(inputs):
            if t == type_:
                return i
        for i, (_, t, _) in enumerate(inputs):
            if _types_match(t, out_type) and _types_match(t, type_):
                return i
        return -1


def _upload_value(widget: Widget, value):
    """The value a media combo with an upload button reports (useImageUploadWidget's value transform)."""
    folder = widget.upload["folder"]
    initial = "undefined" if widget.default is None else _js_str(widget.default)

    def annotated(path):
        if not isinstance(path, str):
            return path
        if folder != "input" and not re.search(r"\[(input|output|temp)\]", path, re.I):
            return f"{path} [{folder}]"
        return path

    if value is None or value == "" or value is False or value == 0:
        return initial
    if isinstance(value, list):
        return [annotated(v) for v in value] if widget.upload["allow_batch"] else annotated(value[0] if value else None)
    return annotated(value)


def _js_str(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _wrap(value):
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(workflow: dict, object_info: dict, rng: random.Random | None = None) -> dict:
    """The API prompt the 1.32.9 frontend builds from a UI workflow: ``(await app.graphToPrompt()).output``.

    ``_meta.title`` is the node's title, else its display name, as in the frontend (compare with ``strip_meta``).
    ``rng`` drives the ``{a|b}`` choices of dynamic prompts (the frontend's are random too).
    Raises WorkflowFormatError for node types unknown to ``object_info`` (other than frontend-only ones).
    """
    graph = _Graph(workflow, object_info)
    unknown = sorted({n.get("type") for nid, n in graph.nodes.items()
                      if graph.layouts[nid] is None and n.get("type") not in VIRTUAL_TYPES})
    if unknown:
        raise WorkflowFormatError(f"node types not in object_info: {', '.join(unknown)}")
    graph.apply_primitives()
    output = {}
    for nid, node in graph.nodes.items():
        if graph.is_virtual(nid) or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        layout = graph.layouts[nid]
        inputs = {}
        for w in layout.widgets:
            if not w.serialize:
                continue
            value = graph.values[nid][w.name]
            if w.dynamic_prompts and isinstance(value, str):
                value = process_dynamic_prompt(value, rng)
            inputs[w.name] = _wrap(value)
        for slot, (name, _, _) in enumerate(graph.runtime_inputs[nid]):
            resolved = graph.resolve_input(nid, slot, set())
            if resolved is None:
                continue
            inputs[name] = [str(resolved[0]), int(resolved[1])]
        output[str(nid)] = {"inputs": inputs, "class_type": node["type"],
                            "_meta": {"title": node.get("title") or layout.display_name}}
    for entry in output.values():
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                del entry["inputs"][name]
    return output


# ----- API -> UI -------------------------------------------------------------------------------------------------

def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _unwrap(value):
    return value["__value__"] if isinstance(value, dict) and set(value) == {"__value__"} else value


def _node_ids(prompt: dict) -> dict[str, int]:
    ids = {}
    used = {int(k) for k in prompt if str(k).isdigit()}
    next_id = max(used, default=0) + 1
    for key in prompt:
        if str(key).isdigit():
            ids[key] = int(key)
        else:
            ids[key] = next_id
            next_id += 1
    return ids


def _estimate_size(layout: NodeLayout) -> list[int]:
    """Roughly LGraphNode.computeSize in 1.32.9 (the frontend enlarges a node that is too small on load)."""
    rows = max(sum(1 for s in layout.sockets if s.widget is None), len(layout.outputs))
    height = 36 + 22 * rows
    for w in layout.widgets:
        height += 120 if w.multiline else 24
    return [320, height]


def api_to_ui(prompt: dict, object_info: dict, positions: dict | None = None, control_value: str = "fixed",
              comfy_version: str | None = None, pack_version: str | None = None,
              max_column_height: int = 1400) -> dict:
    """A 0.4 UI workflow whose ``graphToPrompt`` in the frontend gives back ``prompt``.

    ``prompt`` is API format (``{id: {"class_type", "inputs", "_meta"?}}``). Integer-like ids are kept,
    others (e.g. GraphBuilder's ``".0.0.1"``) get new integer ids. ``positions`` maps prompt ids to
    ``[x, y]``; by default nodes are placed left to right by depth in the graph. Seed-like control widgets
    get ``control_value`` (``"fixed"``, so loading and queueing the workflow reproduces its results).
    Properties carry ``"Node name for S&R"`` and ``cnr_id`` (``comfyui-video-edit`` for this pack's nodes,
    ``comfy-core`` for ComfyUI's own), with ``ver`` when ``pack_version`` / ``comfy_version`` are given.
    """
    ids = _node_ids(prompt)
    layouts = {}
    for key, entry in prompt.items():
        info = object_info.get(entry["class_type"])
        if info is None:
            raise WorkflowFormatError(f"node type not in object_info: {entry['class_type']} (node {key})")
        layouts[key] = node_layout(entry["class_type"], info)

    # depth = longest path from a source
    deps = {key: [v[0] for v in entry["inputs"].values() if _is_link(v)] for key, entry in prompt.items()}
    for key, srcs in deps.items():
        for src in srcs:
            if src not in prompt:
                raise WorkflowFormatError(f"node {key} links to missing node {src}")
    depth: dict[str, int] = {}

    def get_depth(key, stack=()):
        if key in depth:
            return depth[key]
        if key in stack:
            raise WorkflowFormatError(f"cycle through node {key}")
        depth[key] = max((get_depth(s, stack + (key,)) + 1 for s in deps[key]), default=0)
        return depth[key]

    for key in prompt:
        get_depth(key)
    order = sorted(prompt, key=lambda k: (depth[k], ids[k]))

    nodes, links = {}, []
    out_links: dict[tuple[str, int], list[int]] = defaultdict(list)
    link_id = 0
    for key in order:
        entry, layout = prompt[key], layouts[key]
        unknown = [n for n in entry["inputs"] if not layout.socket(n) and not layout.widget(n)]
        if unknown:
            raise WorkflowFormatError(f"node {key} ({entry['class_type']}) has no inputs named {unknown}")
        widgets_values = []
        for w in layout.widgets:
            if w.kind == "value":
                value = entry["inputs"].get(w.input, w.default)
                widgets_values.append(w.default if _is_link(value) else _unwrap(value))
            elif w.kind == "control":
                widgets_values.append(control_value)
            else:
                widgets_values.append(w.default)
        inputs = []
        for sock in layout.sockets:
            value = entry["inputs"].get(sock.name)
            if sock.widget is not None and not _is_link(value):
                continue   # an unconnected widget input is not serialized (compressWidgetInputSlots)
            if value is not None and not _is_link(value):
                raise WorkflowFormatError(f"node {key} ({entry['class_type']}): input {sock.name!r} has no widget, "
                                          f"it needs a link, not {value!r}")
            item = {"name": sock.name, "type": sock.type}
            if sock.widget is not None:
                item["widget"] = {"name": sock.widget}
            item["link"] = None
            if _is_link(value):
                src, slot = value
                src_layout = layouts[src]
                if slot >= len(src_layout.outputs):
                    raise WorkflowFormatError(f"node {src} ({prompt[src]['class_type']}) has no output {slot}")
                link_id += 1
                item["link"] = link_id
                links.append([link_id, ids[src], slot, ids[key], len(inputs), src_layout.outputs[slot][1]])
                out_links[(src, slot)].append(link_id)
            inputs.append(item)
        properties = {}
        if layout.python_module.split(".")[-1] == PACK_ID:
            properties["cnr_id"] = PACK_ID
            if pack_version:
                properties["ver"] = pack_version
        elif not layout.python_module.startswith("custom_nodes"):
            properties["cnr_id"] = "comfy-core"
            if comfy_version:
                properties["ver"] = comfy_version
        properties["Node name for S&R"] = entry["class_type"]
        node = {"id": ids[key], "type": entry["class_type"], "pos": [0, 0],
                "size": _estimate_size(layout), "flags": {}, "order": len(nodes), "mode": 0,
                "inputs": inputs, "outputs": [], "properties": properties, "widgets_values": widgets_values}
        title = (entry.get("_meta") or {}).get("title")
        if title and title != layout.display_name:
            node["title"] = title
        nodes[key] = node
    for key in order:
        nodes[key]["outputs"] = [{"name": name, "type": type_, "links": out_links.get((key, i), [])}
                                 for i, (name, type_) in enumerate(layouts[key].outputs)]

    # layout: columns by depth, stacked top to bottom (a column taller than max_column_height wraps)
    x = 0
    for d in sorted(set(depth.values())):
        column = [k for k in order if depth[k] == d]
        y, width = 0, 0
        for key in column:
            if y > 0 and y + nodes[key]["size"][1] > max_column_height:
                x, y, width = x + width + 80, 0, 0
            nodes[key]["pos"] = [x, y]
            y += nodes[key]["size"][1] + 60
            width = max(width, nodes[key]["size"][0])
        x += width + 80
    for key, pos in (positions or {}).items():
        nodes[str(key) if str(key) in nodes else key]["pos"] = [pos[0], pos[1]]

    body = json.dumps([list(nodes.values()), links], sort_keys=True, default=str)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-video-edit/" + body)),
        "revision": 0,
        "last_node_id": max((n["id"] for n in nodes.values()), default=0),
        "last_link_id": link_id,
        "nodes": list(nodes.values()),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


# ----- helpers / CLI ---------------------------------------------------------------------------------------------

def strip_meta(prompt: dict) -> dict:
    """``{id: {"class_type", "inputs"}}``: a prompt without ``_meta`` (for comparisons)."""
    return {str(k): {"class_type": v.get("class_type"), "inputs": v.get("inputs", {})} for k, v in prompt.items()}


def load_object_info(source: str) -> dict:
    """object_info from a server URL (``http://host:port``) or a JSON file."""
    if re.match(r"https?://", source):
        url = source.rstrip("/")
        if not url.endswith("/object_info"):
            url += "/object_info"
        with urllib.request.urlopen(url, timeout=120) as response:
            return json.loads(response.read())
    return json.loads(Path(source).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("to-api", "UI workflow -> API prompt"), ("to-ui", "API prompt -> UI workflow")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("file")
        p.add_argument("--object-info", required=True, help="server URL or object_info JSON file")
        p.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.file).read_text())
    object_info = load_object_info(args.object_info)
    try:
        result = ui_to_api(data, object_info) if args.command == "to-api" else api_to_ui(data, object_info)
    except WorkflowFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
