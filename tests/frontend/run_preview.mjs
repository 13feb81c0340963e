// Run a workflow in the real ComfyUI frontend (headless Debian chromium) and report the video previews that
// appear in the page afterwards, as an artist would see them under the node after pressing Run.
//
//   node run_preview.mjs <server_url> <out.json> <workflow.json>
//
// out.json: {videos: [{src, readyState, error, width, height}], images: [src], seconds}. A video counts once it
// has decoded a frame (readyState >= 2) or failed (error set); the script waits up to 120 s for one.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { chromium } from 'playwright-core'

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  '--autoplay-policy=no-user-gesture-required']

const [server, out, file] = process.argv.slice(2)
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
  await page.waitForFunction(() => window.app?.graph && window.app.canvas && window.LiteGraph &&
    Object.keys(window.LiteGraph.registered_node_types).length > 10, null, { timeout: 120_000, polling: 200 })
  const workflow = JSON.parse(fs.readFileSync(file, 'utf8'))
  await page.evaluate(async (workflow) => {
    await window.app.loadGraphData(workflow, true, true, 'preview.json')
    await window.app.queuePrompt(0, 1)
  }, workflow)
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
  fs.writeFileSync(out, JSON.stringify({ ...seen, seconds: (Date.now() - t0) / 1000 }, null, 1))
} finally {
  await context.close()
  fs.rmSync(userDataDir, { recursive: true, force: true })
}
