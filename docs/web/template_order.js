// Written by tools/build_workflows.py from TITLES in tools/workflow_titles.py: edit that table, not this file.
// ComfyUI's server lists a pack's templates in the order its file system returns the files (unsorted on most
// Linux file systems), and the template browser shows them in that order. This wraps api.getWorkflowTemplates,
// calls it, and puts this pack's own list simplest first; other packs' lists and every name stay as they are.
const { api } = window.comfyAPI.api;

const ORDER = [
  "TokenFlow - edit a clip",
  "TokenFlow - fast recipe",
  "TokenFlow - SD 2.1 (official default)",
  "TokenFlow - SDXL at 1024",
  "TokenFlow - long clip in passes",
  "FateZero - edit a clip",
  "FateZero - fast recipe",
  "Tune-A-Video - tune and edit a clip",
  "Tune-A-Video - edit again with the tuned model",
  "Tune-A-Video - fast edit with the tuned model",
  "Tune-A-Video - with ControlNet (Canny)",
  "FateZero - shape edit on the tuned model",
  "TokenFlow - on the tuned model",
  "MotionDirector - learn a motion",
  "MotionDirector - generate with the motion",
  "Make-Your-Video - depth-guided with the motion",
  "MotionDirector on AnimateDiff - learn a motion",
  "MotionDirector on AnimateDiff - generate with the motion"
];
// Served at /extensions/<the pack's folder>/, and the server lists the templates under that folder's name.
const PACK = decodeURIComponent(new URL(import.meta.url).pathname.match(/\/extensions\/([^/]+)\//)[1]);

function rank(name) {
  const i = ORDER.indexOf(name);
  return i === -1 ? ORDER.length : i; // a workflow the artist added to the folder goes last
}

const getWorkflowTemplates = api.getWorkflowTemplates;
if (typeof getWorkflowTemplates === "function") {
  api.getWorkflowTemplates = async function () {
    const templates = await getWorkflowTemplates.apply(this, arguments);
    if (Array.isArray(templates?.[PACK])) templates[PACK].sort((a, b) => rank(a) - rank(b));
    return templates;
  };
}
