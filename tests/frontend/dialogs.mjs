// Closing what the frontend opens over the graph: dialogs (missing models, templates), toasts, the error overlay.

export async function closeUi(page) {
  for (let i = 0; i < 5; i++) {
    const open = await page.evaluate(
      () => document.querySelectorAll('.p-dialog, .p-toast-message, [data-testid="error-overlay"]').length
    )
    if (!open) return
    await page.evaluate(() => {
      for (const b of document.querySelectorAll(
        '.p-dialog .p-dialog-close-button, .p-dialog-header-close, .p-toast-close-button, .p-toast-icon-close, ' +
          '[data-testid="error-overlay-dismiss"]'
      ))
        b.click()
    })
    await page.keyboard.press('Escape')
    await page.waitForTimeout(100)
  }
}

// Workflow → Browse Templates → the pack's own category, once the cards in view have loaded their thumbnails
// (the frontend shows the first few and the rest on scrolling, and may draw a card before its thumbnail): each
// card's title (its thumbnail's alt text, the title the card shows) in the order shown, and whether its thumbnail
// loaded. Cards are the images whose alt text names one of the pack's templates. The dialog stays open.
export async function openTemplateCards (page, pack, atLeast = 8) {
  await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'))
  await page.getByText(pack, { exact: true }).first().click({ timeout: 30_000 })
  const names = await page.evaluate(async (pack) => (await window.comfyAPI.api.api.getWorkflowTemplates())[pack] ?? [],
    pack)
  const cards = async () => page.evaluate((names) => [...document.querySelectorAll('img')]
    .filter((i) => names.includes(i.alt))
    .map((i) => ({ title: i.alt, loaded: i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0 })), names)
  const deadline = Date.now() + 60_000
  let shown = await cards()
  while (Date.now() < deadline && (shown.length < atLeast || !shown.every((card) => card.loaded))) {
    await page.waitForTimeout(250)
    shown = await cards()
  }
  return shown
}
