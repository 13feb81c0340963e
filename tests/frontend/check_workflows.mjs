// Load UI-format ComfyUI workflows in the real ComfyUI frontend (headless Debian chromium) and report
// what the frontend makes of them.
//
//   node check_workflows.mjs <server_url> <out.json> [--screenshots DIR] [--outputs runs.json] <workflow.json>...
//
// One browser, one page: the app is opened once, then every workflow is loaded through the app's own
// API (app.loadGraphData) one after the other. For each workflow the report holds
//   missing  node types of the workflow (and of its subgraph definitions) that are not registered in
//            LiteGraph, plus the types the frontend itself reported missing (its afterConfigureGraph
//            hook and the "missing nodes" dialog)
//   errors   page errors, failed requests, console errors and error/warning toasts, open dialogs or the
//            error overlay (the missing-nodes notice among them) raised while it loaded and while its prompt
//            was built (see IGNORED below for what is not counted)
//   warnings console warnings, missing input-media previews (see WARNINGS below) and, in frontends with
//            an error overlay, the model and media files the workflow names that this server lacks (the
//            artist supplies them); not failures
//   prompt   the API prompt the frontend builds from it: (await app.graphToPrompt()).output
//   overlaps_after_load / overlaps_after_previews  pairs of nodes whose bounds overlap, right after loading
//            and once the selected clips' previews have loaded
//   overlaps_after_run, shown_after_run  with --outputs: runs.json maps a workflow path to the results of a real
//            run of it ({node id: the node's UI output}, as ComfyUI's history holds them); each node's result is
//            handed to the frontend as the server hands it over after a run (an "executed" message through the
//            frontend's own api), then, once the results' videos and images have loaded, the overlapping pairs and
//            what the page shows: {videos, images, expected} (result videos with metadata, result images loaded,
//            the number of result files the outputs name)
// The "__startup__" entry also holds the pack's templates: their names as the template browser gets them (through
// the frontend's api, which the pack's template_order.js wraps), each card's thumbnail content type, the cards the
// template browser shows, in order ({title, loaded}), and the template files it failed to get; and the first line
// of a few node help pages (the URL the help panel falls back to).
// and out.json maps each workflow path (as given) to that object. Errors from opening the page before
// any workflow are reported under the key "__startup__" with the same shape.
//
// Before opening the page the script sets the server's user setting Comfy.TutorialCompleted=true, so the
// first-run template browser does not open (that writes to the server's user settings).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { chromium } from 'playwright-core'
import { overlappingNodes } from './overlaps.mjs'
import { closeUi, openTemplateCards } from './dialogs.mjs'

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic'
]
const READY_TIMEOUT_MS = 120_000
const SETTLE_MS = 400
const PREVIEWS_TIMEOUT_MS = 30_000
const PACK = 'comfyui-video-edit'

// What is NOT counted as an error, explicitly (each occurrence is listed under __startup__.ignored):
//  - failed requests and "Failed to load resource" console errors for URLs on another host than the
//    ComfyUI server (the frontend calls api.comfy.org for releases and node-pack info; no internet here),
//  - console errors the frontend logs when such an external fetch fails,
//  - a missing /favicon.ico,
//  - 404s of the optional per-user files the frontend probes on startup (/user.css, /api/userdata/...).
// Reported as warnings (in the workflow's "warnings", not failing): 404s of /api/view?type=input... (the
// preview of an input image/video the workflow names but the server's input folder lacks) and
// console.warn messages.
const IGNORED = [
  { what: 'favicon request', test: (text, url) => /\/favicon\.ico/.test(url || '') },
  { what: 'external-host resource', test: (text, url, origin) => !!url && isExternal(url, origin) },
  {
    what: 'external-host fetch error message',
    test: (text) => /(api\.comfy\.org|registry\.comfy\.org|ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED)/i.test(text)
  },
  {
    what: 'size probe of a missing model\'s download (its URL is on another host)',
    test: (text) => /Error fetching file size: TypeError: Failed to fetch/.test(text)
  },
  {
    what: 'optional user file probe',
    test: (text, url, origin) =>
      !!url && /(HTTP 404|status of 404|ERR_ABORTED)/.test(text) &&
      (url.startsWith(`${origin}/api/userdata`) || url === `${origin}/user.css`)
  }
]
const WARNINGS = [
  {
    what: 'missing input media preview',
    test: (text, url, origin) =>
      !!url && /(HTTP 404|status of 404|ERR_ABORTED)/.test(text) && url.startsWith(`${origin}/api/view?`) &&
      /[?&]type=input(&|$)/.test(url)
  }
]

function isExternal(url, origin) {
  try {
    const u = new URL(url)
    if (u.protocol === 'data:' || u.protocol === 'blob:') return false
    return u.origin !== origin
  } catch {
    return false
  }
}

function parseArgs(argv) {
  const args = { workflows: [], screenshots: null, outputs: {} }
  const rest = []
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--screenshots') args.screenshots = argv[++i]
    else if (argv[i] === '--outputs') args.outputs = JSON.parse(fs.readFileSync(argv[++i], 'utf8'))
    else rest.push(argv[i])
  }
  if (rest.length < 2) {
    console.error('usage: node check_workflows.mjs <server_url> <out.json> [--screenshots DIR] [--outputs runs.json] <workflow.json>...')
    process.exit(2)
  }
  ;[args.server, args.out, ...args.workflows] = rest
  args.server = args.server.replace(/\/+$/, '')
  return args
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const origin = new URL(args.server).origin
  if (args.screenshots) fs.mkdirSync(args.screenshots, { recursive: true })

  // No first-run template browser.
  await fetch(`${args.server}/settings/Comfy.TutorialCompleted`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: 'true'
  })

  const report = {}
  const startup = { missing: [], errors: [], warnings: [], prompt: {} }
  let current = startup
  const ignored = []
  const note = (text, url, warning = false) => {
    const full = text + (url ? ` (${url})` : '')
    const rule = IGNORED.find((r) => r.test(text, url, origin))
    if (rule) return ignored.push(`${rule.what}: ${full}`)
    const warn = WARNINGS.find((r) => r.test(text, url, origin))
    if (warn) return current.warnings.push(`${warn.what}: ${full}`)
    if (warning) return current.warnings.push(full)
    current.errors.push(full)
  }

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 've-chromium-'))
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1600, height: 1000 }
  })
  try {
    const page = context.pages()[0] ?? (await context.newPage())
    page.on('pageerror', (err) => note(`pageerror: ${err.stack || err.message}`))
    page.on('console', (msg) => {
      if (msg.type() === 'error') note(`console.error: ${msg.text()}`, msg.location()?.url)
      else if (msg.type() === 'warning') note(`console.warn: ${msg.text()}`, msg.location()?.url, true)
    })
    page.on('requestfailed', (req) => {
      note(`request failed: ${req.method()} ${req.failure()?.errorText ?? ''}`, req.url())
    })
    page.on('response', (res) => {
      if (res.status() >= 400) note(`HTTP ${res.status()}: ${res.request().method()}`, res.url())
    })

    const t0 = Date.now()
    await page.goto(args.server + '/', { waitUntil: 'domcontentloaded' })
    await page.waitForFunction(
      () =>
        window.app?.graph &&
        window.app.canvas &&
        window.LiteGraph &&
        Object.keys(window.LiteGraph.registered_node_types).length > 10 &&
        !document.querySelector('.p-progressspinner'),
      null,
      { timeout: READY_TIMEOUT_MS, polling: 200 }
    )
    // The frontend's own missing-node report: the afterConfigureGraph hook gets the list it computed.
    await page.evaluate(() => {
      window.__veMissing = null
      window.app.registerExtension({
        name: 'comfyui-video-edit.workflowCheck',
        afterConfigureGraph(missingNodeTypes) {
          window.__veMissing = (missingNodeTypes ?? []).map((m) => (typeof m === 'string' ? m : m.type))
        }
      })
    })
    // The pack's templates as the template browser gets them (names, then each card's thumbnail) and shows them,
    // and the node help pages at the URL the frontend's node help panel falls back to.
    startup.templates = await page.evaluate(async (pack) => {
      const names = (await window.comfyAPI.api.api.getWorkflowTemplates())[pack] ?? []
      const thumbnails = {}
      for (const name of names) {
        const res = await fetch(`/api/workflow_templates/${pack}/${name}.jpg`)
        thumbnails[name] = res.ok ? res.headers.get('content-type') : `HTTP ${res.status}`
      }
      return { names, thumbnails }
    }, PACK)
    // The template browser in a page of its own (not every frontend closes it on request): the cards it shows, in
    // order, and any template file it failed to get.
    const browse = await context.newPage()
    startup.templates.failed = []
    browse.on('response', (res) => {
      if (res.status() >= 400 && res.url().includes('/workflow_templates')) {
        startup.templates.failed.push(`HTTP ${res.status()}: ${res.url()}`)
      }
    })
    await browse.goto(args.server + '/', { waitUntil: 'domcontentloaded' })
    await browse.waitForFunction(() => window.app?.graph && window.app.extensionManager, null,
      { timeout: READY_TIMEOUT_MS, polling: 200 })
    startup.templates.cards = await openTemplateCards(browse, PACK)
    await browse.close()
    startup.help_pages = await page.evaluate(async (pack) => {
      const pages = {}
      for (const id of ['VE_OneShotTune', 'VE_TokenFlow', 'VE_AttentionFusion', 'VE_TrainMotionDirector', 'VE_LoadVideo']) {
        const res = await fetch(`/extensions/${pack}/docs/${id}.md`)
        pages[id] = res.ok ? (await res.text()).split('\n')[0] : `HTTP ${res.status}`
      }
      return pages
    }, PACK)
    await page.waitForTimeout(SETTLE_MS)
    const ui = await collectUi(page)
    startup.errors.push(...ui.errors)
    startup.warnings.push(...ui.warnings)
    startup.seconds = (Date.now() - t0) / 1000
    startup.node_types = await page.evaluate(() => Object.keys(window.LiteGraph.registered_node_types).length)

    for (const file of args.workflows) {
      const entry = { missing: [], errors: [], warnings: [], prompt: {} }
      const t0 = Date.now()
      report[file] = entry
      current = entry
      let workflow
      try {
        workflow = JSON.parse(fs.readFileSync(file, 'utf8'))
      } catch (err) {
        entry.errors.push(`cannot read workflow: ${err.message}`)
        continue
      }
      try {
        const result = await page.evaluate(
          async ({ workflow, name }) => {
            const types = new Set()
            for (const n of workflow.nodes ?? []) types.add(n.type)
            for (const sg of workflow.definitions?.subgraphs ?? []) {
              for (const n of sg.nodes ?? []) types.add(n.type)
            }
            const subgraphIds = new Set((workflow.definitions?.subgraphs ?? []).map((s) => s.id))
            const unregistered = [...types].filter(
              (t) => !(t in window.LiteGraph.registered_node_types) && !subgraphIds.has(t)
            )
            window.__veMissing = null
            await window.app.loadGraphData(workflow, true, true, name)
            // Let rAF-scheduled work (previews, fit view) run.
            await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))
            const { output } = await window.app.graphToPrompt()
            return {
              unregistered,
              reported: window.__veMissing ?? [],
              prompt: JSON.parse(JSON.stringify(output)),
              loadedNodes: window.app.graph.nodes.length
            }
          },
          { workflow, name: path.basename(file) }
        )
        entry.missing = [...new Set([...result.unregistered, ...result.reported])]
        entry.prompt = result.prompt
        entry.loaded_nodes = result.loadedNodes
        entry.overlaps_after_load = await page.evaluate(overlappingNodes)
      } catch (err) {
        entry.errors.push(`loading failed: ${err.message}`)
      }
      await previewsSettled(page)
      // Once the selected clips' previews have loaded (the node grows to show them).
      entry.overlaps_after_previews = await page.evaluate(overlappingNodes)
      if (args.outputs[file]) {
        const expected = await showResults(page, args.outputs[file])
        await previewsSettled(page)
        entry.overlaps_after_run = await page.evaluate(overlappingNodes)
        entry.shown_after_run = { ...(await page.evaluate(shownResults)), expected }
      }
      // Open dialogs and overlays (the missing-nodes notice among them) and error/warning toasts count as errors.
      const ui = await collectUi(page)
      entry.errors.push(...ui.errors)
      entry.warnings.push(...ui.warnings)
      if (args.screenshots) {
        try {
          await page.evaluate(() => {
            window.app.canvas.min_font_size_for_lod = 0 // full detail even when zoomed out (not saved)
            return window.app.extensionManager?.command?.execute?.('Comfy.Canvas.FitView')
          })
          await page.waitForTimeout(150)
        } catch {}
        await page.screenshot({ path: path.join(args.screenshots, path.basename(file, '.json') + '.png') })
      }
      await closeUi(page)
      entry.seconds = (Date.now() - t0) / 1000
    }
  } finally {
    await context.close()
    fs.rmSync(userDataDir, { recursive: true, force: true })
  }

  const out = { __startup__: startup, ...report }
  out.__startup__.ignored = ignored
  fs.mkdirSync(path.dirname(path.resolve(args.out)), { recursive: true })
  fs.writeFileSync(args.out, JSON.stringify(out, null, 1))
  const bad = Object.entries(report).filter(([, e]) => e.missing.length || e.errors.length)
  console.log(`${args.workflows.length} workflow(s) checked, ${bad.length} with missing nodes or errors; ${ignored.length} ignored message(s)`)
}

// A run's results, as the server hands them to the page after a run: one "executed" message per node, through
// the frontend's own api (its handler stores the output and calls the node's onExecuted), then the redraw the
// run's last "executing" message asks for. Waits (up to PREVIEWS_TIMEOUT_MS) until the page shows as many result
// files as the outputs name.
async function showResults(page, outputs) {
  await page.evaluate((outputs) => {
    const { api } = window.comfyAPI.api
    for (const [node, output] of Object.entries(outputs)) {
      api.dispatchCustomEvent('executed', { node, display_node: node, output, prompt_id: 'replayed-run' })
    }
    window.app.canvas.setDirty(true, true)
  }, outputs)
  const expected = Object.values(outputs).reduce((n, output) => n + (output.images?.length ?? 0), 0)
  const deadline = Date.now() + PREVIEWS_TIMEOUT_MS
  while (Date.now() < deadline) {
    const shown = await page.evaluate(shownResults)
    if (shown.videos + shown.images >= expected) break
    await page.waitForTimeout(250)
  }
  return expected
}

// Run in the page: the result files it shows, {videos: result videos with their metadata loaded, images: result
// images loaded}.
function shownResults() {
  const videos = [...document.querySelectorAll('video')].filter((v) => /[?&]type=(output|temp)/.test(v.currentSrc || v.src))
  const images = window.app.graph.nodes.flatMap((n) => n.imgs ?? []).filter((i) => i.complete && i.naturalWidth > 0)
  return { videos: videos.filter((v) => v.readyState >= 1).length, images: images.length }
}

// Wait until every <video> on the page has its metadata (a selected clip's preview) and every node image has
// loaded, and the nodes' sizes have stopped changing (the node grows to show the preview), or PREVIEWS_TIMEOUT_MS.
async function previewsSettled(page) {
  let last = ''
  let same = 0
  const deadline = Date.now() + PREVIEWS_TIMEOUT_MS
  while (Date.now() < deadline && same < 3) {
    const state = await page.evaluate(() =>
      JSON.stringify([
        [...document.querySelectorAll('video')].every((v) => v.readyState >= 1 || v.error) &&
          window.app.graph.nodes.every((n) => (n.imgs ?? []).every((i) => i.complete)),
        window.app.graph.nodes.map((n) => [n.size[0], n.size[1]])
      ])
    )
    same = state === last && state.startsWith('[true') ? same + 1 : 0
    last = state
    await page.waitForTimeout(SETTLE_MS)
  }
}

// Open dialogs, the error overlay and error/warning toasts, as text: {errors, warnings}. The missing-models
// dialog of older frontends is a warning. Newer frontends
// list missing nodes, models and input media in one error overlay; when its count is exactly the missing
// models and media (read from the frontend's own stores) and no node is missing, it is a warning.
async function collectUi(page) {
  return page.evaluate(() => {
    const texts = []
    const warnings = []
    for (const d of document.querySelectorAll('.p-dialog')) {
      const t = d.innerText.trim().replace(/\s+/g, ' ')
      // Older frontends list the missing models (offering their download) in a dialog of their own.
      if (t.startsWith('Missing Models')) warnings.push(`missing models (the artist downloads them): ${t.slice(0, 2000)}`)
      else if (t) texts.push(`dialog: ${t.slice(0, 2000)}`)
    }
    const pinia = document.querySelector('#vue-app')?.__vue_app__?.config?.globalProperties?.$pinia
    const store = (id) => pinia?._s?.get(id)
    const files = (store('missingModel')?.missingModelCount ?? 0) + (store('missingMedia')?.missingMediaCount ?? 0)
    const nodes = store('missingNodesError')?.missingNodeCount ?? 0
    for (const d of document.querySelectorAll('[data-testid="error-overlay"]')) {
      const t = d.innerText.trim().replace(/\s+/g, ' ')
      // "N errors found", or for one missing model "Warning <file> is missing ... a required model file"
      const count = Number((/(\d+) (?:errors?|issues?) found/.exec(t) ?? [])[1] ??
        (/^Warning \S+ is missing .* is missing a required model file/.test(t) ? 1 : NaN))
      if (t && nodes === 0 && files > 0 && count === files) {
        warnings.push(`missing model or media files (the artist supplies them): ${t.slice(0, 2000)}`)
      } else if (t) texts.push(`overlay: ${t.slice(0, 2000)}`)
    }
    for (const t of document.querySelectorAll('.p-toast-message')) {
      if (/p-toast-message-(error|warn)/.test(t.className)) {
        texts.push(`toast: ${t.innerText.trim().replace(/\s+/g, ' ').slice(0, 2000)}`)
      }
    }
    return { errors: texts, warnings }
  })
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
