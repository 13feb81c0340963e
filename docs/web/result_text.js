// Shows in the node the text a video_edit node returns with its result (ComfyUI's "text" UI output): the saved
// paths, the inversion method, the warp error, the final losses, the frames loaded. The frontend shows such text
// only for its own Preview Any node, so this adds a read-only text box to the nodes that send one. The box exists
// from the start (so the node does not grow, and cover its neighbours, when a result arrives) and is left out of
// the saved workflow and of the prompt.
const { app } = window.comfyAPI.app;
const { ComfyWidgets } = window.comfyAPI.widgets;

// Node ids whose result is a number, a path or a choice; tools/workflow_cards.py reserves room for the box.
const RESULT_TEXT_NODES = ["VE_LoadVideo", "VE_SaveVideo", "VE_EditMetrics", "VE_PlotLoss", "VE_OneShotTune",
  "VE_SaveTuned", "VE_DDIMInvert", "VE_TrainMotionDirector", "VE_SaveMotionLoRA", "VE_LoadMotionLoRA"];

function resultWidget(node) {
  const { widget } = ComfyWidgets.STRING(node, "result", ["STRING", { multiline: true }], app);
  widget.serialize = false; // not in the workflow's widgets_values
  widget.options = { ...(widget.options ?? {}), serialize: false }; // not in the prompt
  if (widget.inputEl) {
    widget.inputEl.readOnly = true;
    widget.inputEl.placeholder = "result (after a run)";
  }
  return widget;
}

app.registerExtension({
  name: "comfyui-video-edit.result-text",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!RESULT_TEXT_NODES.includes(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      resultWidget(this);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === "result");
      if (widget && message?.text) widget.value = [].concat(message.text).join("\n");
    };
  },
});
