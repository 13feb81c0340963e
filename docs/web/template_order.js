// Lists this pack's templates in the template browser simplest first. ComfyUI's server lists a pack's templates in
// the order its file system returns the files (unsorted on most Linux file systems), and the template browser
// shows them in that order. This wraps api.getWorkflowTemplates, calls it, and sorts this pack's own list by
// template_order.json beside this file (written by tools/build_workflows.py from tools/workflow_titles.py); other
// packs' lists and every name stay as they are.
const { api } = window.comfyAPI.api;

// Served at /extensions/<the pack's folder>/, and the server lists the templates under that folder's name.
const HERE = new URL(import.meta.url);
const PACK = decodeURIComponent(HERE.pathname.match(/\/extensions\/([^/]+)\//)[1]);
const ORDER = fetch(new URL("template_order.json", HERE))
  .then((response) => (response.ok ? response.json() : []))
  .catch(() => []);

const getWorkflowTemplates = api.getWorkflowTemplates;
if (typeof getWorkflowTemplates === "function") {
  api.getWorkflowTemplates = async function () {
    const [templates, order] = await Promise.all([getWorkflowTemplates.apply(this, arguments), ORDER]);
    // a workflow the artist added to the folder goes last
    const rank = (name) => (order.includes(name) ? order.indexOf(name) : order.length);
    if (Array.isArray(templates?.[PACK])) templates[PACK].sort((a, b) => rank(a) - rank(b));
    return templates;
  };
}
