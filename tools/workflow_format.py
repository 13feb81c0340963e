"""Author ComfyUI workflows: ``api_to_ui(prompt, object_info)`` writes the UI-format workflow (what the editor
saves and the template browser lists) whose ``graphToPrompt`` in the real frontend gives back ``prompt``.

The API graphs in ``tools/workflow_graphs`` are the single source of the shipped workflows; tests and the demo
queue those graphs, and the frontend check asserts that the frontend builds the same prompt from each shipped
UI workflow. Widgets are laid out from ``object_info`` as the frontend creates them (``node_layout``): inputs in
``input_order``, one widget per widget-typed input unless ``forceInput``, a ``control_after_generate`` widget
after seed-like INTs (and control + filter widgets after such COMBOs), an ``upload`` widget for upload combos.
Nodes are placed left to right by depth. Use integer-like node ids (``GraphBuilder(prefix="")``); others are
renumbered. Subgraphs and group nodes are not written.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

PACK_ID = "comfyui-video-edit"

# Input types the 1.32.9 frontend draws a widget for (scripts/widgets.ts ComfyWidgets; IMAGEUPLOAD is the
# upload button the Comfy.UploadImage extension adds).
WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "IMAGEUPLOAD", "COLOR",
                "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA"}
# Frontend-only node types (never in a prompt).
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
