// Play videos in headless Debian chromium, as the ComfyUI frontend's preview does: one <video> element per URL.
//
//   node play_videos.mjs <out.json> <url>...
//
// For each URL, out.json holds what the element reached within 30 s: readyState (2 = HAVE_CURRENT_DATA or more
// means a frame decoded), the media error code and message if any, videoWidth/videoHeight, duration, and
// whether currentTime advanced after play().
import fs from 'node:fs'
import { chromium } from 'playwright-core'

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  '--autoplay-policy=no-user-gesture-required']

const [out, ...urls] = process.argv.slice(2)
const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS })
const page = await browser.newPage()
const report = {}
for (const url of urls) {
  // A page of the server's own origin, as the frontend's preview is (newer servers refuse cross-site media).
  await page.goto(new URL('/api/system_stats', url).href)
  await page.setContent('<video id="v" muted playsinline preload="auto"></video>')
  report[url] = await page.evaluate(async (src) => {
    const v = document.getElementById('v')
    const settled = new Promise((resolve) => {
      v.addEventListener('loadeddata', () => resolve('loadeddata'))
      v.addEventListener('error', () => resolve('error'))
      setTimeout(() => resolve('timeout'), 30000)
    })
    v.src = src
    const event = await settled
    let advanced = false
    if (event === 'loadeddata') {
      const start = v.currentTime
      try { await v.play() } catch (e) {}
      await new Promise((r) => setTimeout(r, 300))
      advanced = v.currentTime > start
    }
    return {
      event, readyState: v.readyState, error: v.error ? v.error.code : null,
      errorMessage: v.error ? v.error.message : null, videoWidth: v.videoWidth, videoHeight: v.videoHeight,
      duration: v.duration, advanced
    }
  }, url)
}
await browser.close()
fs.writeFileSync(out, JSON.stringify(report, null, 1))
