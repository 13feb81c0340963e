// Run a workflow in the real ComfyUI frontend (headless Debian chromium) and report the video previews that
// appear in the page afterwards, as an artist would see them under the node after pressing Run.
//
//   node run_preview.mjs <server_url> <out.json> <workflow.json> [values.json]
//
// values.json (optional): an API prompt whose widget values replace the workflow's before the run (a shipped
// workflow cut to a CPU's size), node by node, widget by name.
// out.json: {videos: [{src, readyState, error, width, height}], images: [src], overlaps, seconds}. A video counts
// once it has decoded a frame (readyState >= 2) or failed (error set); the script waits up to 120 s for one, then
// for the run to end, and lists the pairs of nodes whose bounds (the frontend's own) overlap then.
// With VE_SCREENSHOTS=<dir> (tools/readme_screenshots.py) it also saves the page: templates.png, the template
// browser on the pack's templates, before loading the workflow; after_run.png, the whole graph after the run.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { chromium } from 'playwright-core'
import { overlappingNodes } from './overlaps.mjs'
import { closeUi, openTemplateCards } from './dialogs.mjs'

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  '--autoplay-policy=no-user-gesture-required']

const [server, out, file, valuesFile] = process.argv.slice(2)

async function screenshotTemplates (page, target) {
  await openTemplateCards(page, 'comfyui-video-edit')
  await page.waitForTimeout(500)
  await page.screenshot({ path: target })
  await page.reload({ waitUntil: 'domcontentloaded' }) // the dialog closed, as a fresh page
  await appReady(page)
}

async function appReady (page) {
  await page.waitForFunction(() => window.app?.graph && window.app.canvas && window.LiteGraph &&
    Object.keys(window.LiteGraph.registered_node_types).length > 10, null, { timeout: 120_000, polling: 200 })
}

await fetch(`${server}/settings/Comfy.TutorialCompleted`, {
  method: 'POST', headers: { 'Content-Type': 'application/json' }, body: 'true'
})
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 've-chromium-'))
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1600, height: 1000 }
})
const t0 = Date.now()
try {
  const page = context.pages()[0] ?? (await context.newPage())
  await page.goto(server + '/', { waitUntil: 'domcontentloaded' })
  await appReady(page)
  const shots = process.env.VE_SCREENSHOTS
  if (shots) await screenshotTemplates(page, path.join(shots, 'templates.png'))
  const workflow = JSON.parse(fs.readFileSync(file, 'utf8'))
  const values = valuesFile ? JSON.parse(fs.readFileSync(valuesFile, 'utf8')) : {}
  await page.evaluate(async ({ workflow, values }) => {
    await window.app.loadGraphData(workflow, true, true, 'preview.json')
    for (const node of window.app.graph.nodes) {
      const inputs = values[String(node.id)]?.inputs ?? {}
      for (const w of node.widgets ?? []) {
        if (w.name in inputs && !Array.isArray(inputs[w.name])) w.value = inputs[w.name]
      }
    }
    window.__veDone = false
    const { api } = window.comfyAPI.api
    api.addEventListener('execution_success', () => { window.__veDone = true })
    api.addEventListener('execution_error', () => { window.__veDone = true })
    await window.app.queuePrompt(0, 1)
  }, { workflow, values })
  const state = () => page.evaluate(() => ({
    videos: [...document.querySelectorAll('video')].map((v) => ({
      src: v.currentSrc || v.src, readyState: v.readyState, error: v.error ? v.error.code : null,
      width: v.videoWidth, height: v.videoHeight
    })),
    images: [...document.querySelectorAll('img')].map((i) => i.src).filter((s) => s.includes('/view'))
  }))
  let seen = await state()
  while (Date.now() - t0 < 120_000 && !seen.videos.some((v) => v.readyState >= 2 || v.error !== null)) {
    await page.waitForTimeout(250)
    seen = await state()
  }
  // The run's end as the page learns it (after every node's result reached it over the websocket).
  await page.waitForFunction(() => window.__veDone, null, { timeout: 600_000, polling: 250 })
  const t1 = Date.now()
  seen = await state()
  const saved = (v) => /[?&]type=output/.test(v.src) && (v.readyState >= 2 || v.error !== null)
  while (Date.now() - t1 < 120_000 && !seen.videos.some(saved)) {
    await page.waitForTimeout(250)
    seen = await state()
  }
  const overlaps = await page.evaluate(overlappingNodes)
  const results = await page.evaluate(() =>
    Object.fromEntries(window.app.graph.nodes.filter((n) => n.widgets?.some((w) => w.name === 'result'))
      .map((n) => [n.type, n.widgets.find((w) => w.name === 'result').value])))
  if (shots) {
    await closeUi(page) // the missing-checkpoint notice of the shipped workflow (the run used the tiny one)
    await page.evaluate(() => {
      window.app.canvas.min_font_size_for_lod = 0 // full detail even when zoomed out (not saved)
      return window.app.extensionManager?.command?.execute?.('Comfy.Canvas.FitView')
    })
    await page.waitForTimeout(500)
    await page.screenshot({ path: path.join(shots, 'after_run.png') })
  }
  fs.writeFileSync(out, JSON.stringify({ ...seen, overlaps, results, seconds: (Date.now() - t0) / 1000 }, null, 1))
} finally {
  await context.close()
  fs.rmSync(userDataDir, { recursive: true, force: true })
}
