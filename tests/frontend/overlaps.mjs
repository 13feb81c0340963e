// Run in the page (page.evaluate(overlappingNodes)): the pairs of nodes whose bounds, as the frontend computes
// them (title, widgets, grown previews), overlap, e.g. "VE_LoadVideo#2 and ControlNetLoader#5: 320x112 px".
export function overlappingNodes() {
  const boxes = window.app.graph.nodes.map((n) => ({ name: `${n.type}#${n.id}`, b: Array.from(n.getBounding()) }))
  const found = []
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, c] = [boxes[i].b, boxes[j].b]
      const w = Math.min(a[0] + a[2], c[0] + c[2]) - Math.max(a[0], c[0])
      const h = Math.min(a[1] + a[3], c[1] + c[3]) - Math.max(a[1], c[1])
      if (w > 0 && h > 0) found.push(`${boxes[i].name} and ${boxes[j].name}: ${Math.round(w)}x${Math.round(h)} px`)
    }
  }
  return found
}
